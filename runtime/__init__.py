"""Banyan's runtime: `from banyan.runtime import Engine`.

Names resolve on first use, so importing the package does not start torch or ZeroMQ.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Engine": ".engine",
    "EngineDeadError": ".engine",
    "RequestError": ".engine",
    "EngineOptions": ".options",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
