"""Per-request timing records and the summary statistics of a benchmark run.

Times are `time.perf_counter()` seconds. A request's output arrives in chunks (one per
streamed event, which may carry several tokens): TTFT is the first chunk, ITL the gaps
between chunks, TPOT the decode time spread over the tokens after the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying output
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None with fewer than two tokens."""
        if self.output_tokens < 2 or not self.chunk_times:
            return None
        return (self.end - self.chunk_times[0]) / (self.output_tokens - 1)

    @property
    def itl(self) -> list[float]:
        return np.diff(self.chunk_times).tolist()


def distribution(values: Iterable[float]) -> dict[str, float | None]:
    """Mean and percentiles (linear interpolation); None everywhere for no values."""
    arr = np.asarray(list(values), dtype=float)
    keys = ["mean"] + [f"p{q}" for q in PERCENTILES]
    if arr.size == 0:
        return dict.fromkeys(keys)
    return dict(zip(keys, [float(arr.mean())] + [float(v) for v in np.percentile(arr, PERCENTILES)]))


def cached_ratio(records: Iterable[RequestRecord]) -> float:
    """Prompt tokens served from the prefix cache over all prompt tokens."""
    prompt = cached = 0
    for r in records:
        prompt += r.prompt_tokens
        cached += r.cached_tokens
    return cached / prompt if prompt else 0.0


def summarize(records: list[RequestRecord], duration: float) -> dict:
    """Throughputs over the run's wall time and latency distributions of the successful requests."""
    ok = [r for r in records if r.ok]
    prompt = sum(r.prompt_tokens for r in ok)
    output = sum(r.output_tokens for r in ok)
    return {
        "duration_s": duration,
        "completed": len(ok),
        "errors": len(records) - len(ok),
        "error_examples": sorted({r.error for r in records if not r.ok})[:5],
        "input_tokens": prompt,
        "output_tokens": output,
        "request_throughput": len(ok) / duration,
        "input_token_throughput": prompt / duration,
        "output_token_throughput": output / duration,
        "cached_ratio": cached_ratio(ok),
        "ttft_s": distribution(r.ttft for r in ok if r.ttft is not None),
        "tpot_s": distribution(r.tpot for r in ok if r.tpot is not None),
        "itl_s": distribution(x for r in ok for x in r.itl),
        "e2e_s": distribution(r.e2e for r in ok),
    }
