"""Process-wide settings (SGLang's `global_config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends.base import Backend


@dataclass
class GlobalConfig:
    default_backend: "Backend | None" = None  # what `run` uses without backend=


global_config = GlobalConfig()
