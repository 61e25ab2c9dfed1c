"""The embedded default model: a tiny random V4 checkpoint, made on first use.

Served when no model path is given. It is deterministic (fixed seed), so every
machine builds the same weights; nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .make_tiny import make_tiny

DEFAULT_SEED = 0
DEFAULT_NAME = "banyan-tiny-v4"


def default_model_dir() -> Path:
    """`$BANYAN_HOME/banyan-tiny-v4` (default `~/.cache/banyan`), created if missing."""
    home = Path(os.environ.get("BANYAN_HOME", Path.home() / ".cache" / "banyan"))
    target = home / f"{DEFAULT_NAME}-seed{DEFAULT_SEED}-mtp"  # -mtp: with its MTP layer
    if (target / "model.safetensors").exists():
        return target
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=home, prefix=".staging-"))
    make_tiny(staging, layout="official", seed=DEFAULT_SEED)
    try:
        staging.rename(target)
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return target
