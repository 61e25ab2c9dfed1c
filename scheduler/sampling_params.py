"""Per-request sampling and stopping parameters (a msgspec Struct, sent over IPC as is)."""

from __future__ import annotations

import re

import msgspec


class SamplingParams(msgspec.Struct, omit_defaults=True):
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = []
    stop_regex: list[str] = []  # stop when the output matches one (the match is cut from the text)
    min_new_tokens: int = 0  # EOS and stop tokens / strings are ignored before this many tokens
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    n: int = 1
    logit_bias: dict[int, float] = {}
    skip_special_tokens: bool = True

    def validate(self, vocab_size: int) -> None:
        """Raise ValueError naming the first invalid field."""
        checks = [
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k == -1 or self.top_k >= 1, "top_k must be -1 (off) or >= 1"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (0 < self.repetition_penalty <= 2, "repetition_penalty must be in (0, 2]"),
            (self.n >= 1, "n must be >= 1"),
            (all(0 <= t < vocab_size for t in self.stop_token_ids), "stop_token_ids has an id outside the vocabulary"),
            (all(0 <= t < vocab_size for t in self.logit_bias), "logit_bias has an id outside the vocabulary"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (self.min_new_tokens >= 0, "min_new_tokens must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        for pattern in self.stop_regex:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"stop_regex {pattern!r} is not a valid regular expression: {exc}") from None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
