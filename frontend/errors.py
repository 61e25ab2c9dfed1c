"""Exceptions of the frontend language."""

from __future__ import annotations


class UnsupportedFeatureError(NotImplementedError):
    """The program uses a feature its backend cannot provide; the message names the feature."""


class BackendError(RuntimeError):
    """A backend request failed; the message is the server's own error message."""
