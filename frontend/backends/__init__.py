"""Backends run a program's generation requests: a Banyan server (`RuntimeEndpoint`), an
in-process engine (`LocalEngine`) or any OpenAI-compatible chat server (`OpenAI`)."""

from .base import Backend
from .endpoint import RuntimeEndpoint
from .engine import LocalEngine
from .openai import OpenAI

__all__ = ["Backend", "LocalEngine", "OpenAI", "RuntimeEndpoint"]
