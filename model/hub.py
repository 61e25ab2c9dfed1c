"""Model paths as users type them: a checkpoint directory, or a Hugging Face Hub id
(`deepseek-ai/DeepSeek-V4-Flash`) found in the local Hub cache. Banyan never downloads.

`resolve_model_path` is the one place every entry point (`banyan serve`, `banyan generate`,
`banyan bench`, `Engine`, `load_model`) turns what it was given into a directory.
"""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(FileNotFoundError):
    """Neither a local path nor a cached Hub model; the message says where Banyan looked."""


def is_hub_id(path: str) -> bool:
    """`org/name` that is not an existing local path."""
    return _HUB_ID.match(path) is not None and not Path(path).exists()


def resolve_model_path(path: str | None) -> str:
    """A local checkpoint directory for `path`: None -> the embedded tiny model; an existing
    path -> itself; a Hub id -> its snapshot in the Hub cache (`$HF_HUB_CACHE`, default
    `$HF_HOME/hub`), looked up offline."""
    if path is None:
        from .default import default_model_dir

        return str(default_model_dir())
    if Path(path).exists():
        return path
    if not is_hub_id(path):
        raise ModelNotFoundError(f"model path {path!r} does not exist")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(path, local_files_only=True)
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{path!r} is not a local directory, and the Hugging Face cache {constants.HF_HUB_CACHE} has no "
            f"snapshot of it. Banyan does not download models: fetch it first (`hf download {path}`), or set "
            f"HF_HUB_CACHE / HF_HOME to the cache that holds it.") from None
