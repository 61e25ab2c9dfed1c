"""`FakeBackend`: a deterministic text backend for testing the interpreter without a model."""

from __future__ import annotations

import threading
import time
from typing import Callable

from banyan.frontend.backends.base import Completion, OnText
from banyan.frontend.backends.text import TextBackend
from banyan.frontend.sampling import SamplingParams
from banyan.runtime.encoding.tokens import THINK_CLOSE

EOS_STOP = {"type": "stop", "matched": 1}
Reply = Callable[[str, SamplingParams], "str | tuple[str, dict]"]


def default_reply(prompt: str, params: SamplingParams) -> str | tuple[str, dict]:
    """"thought" for a reasoning request (ended by `</think>`), "answer" otherwise."""
    if params.stop == (THINK_CLOSE,):
        return "thought", {"type": "stop", "matched": THINK_CLOSE}
    return "answer"


class FakeBackend(TextBackend):
    """Each completion is `reply(prompt, params)` (text, or text and finish_reason; EOS by default),
    streamed two characters at a time (10 ms apart). Tokens are UTF-8 bytes; a token's logprob is a fixed
    function of its value and position."""

    def __init__(self, reply: Reply = default_reply) -> None:
        self.reply = reply
        self.prompts: list[str] = []
        self.cached: list[str] = []
        self._lock = threading.Lock()

    def complete(self, prompt: str, params: SamplingParams, on_text: OnText | None = None) -> Completion:
        with self._lock:
            self.prompts.append(prompt)
        out = self.reply(prompt, params)
        text, finish = out if isinstance(out, tuple) else (out, EOS_STOP)
        if on_text is not None:
            for i in range(0, len(text), 2):
                on_text(text[i:i + 2])
                time.sleep(0.01)
        return Completion(text, {"prompt_tokens": len(self.tokenize(prompt)), "completion_tokens": len(text),
                                 "cached_tokens": 0, "finish_reason": finish})

    def cache_prefix(self, text: str) -> None:
        self.cached.append(text)

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    @staticmethod
    def logprob(token: int, position: int) -> float:
        return -((token * 7 + position) % 13) / 10 - 0.05

    def token_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float | None]]:
        return [[None if i == 0 else self.logprob(t, i) for i, t in enumerate(seq)][start:]
                for seq, start in zip(sequences, starts)]
