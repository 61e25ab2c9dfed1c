"""Scheduler + IPC overhead of a decode step at batch 1.

The engine's step is the gap between consecutive streamed tokens of one request as the
caller sees them (scheduler bookkeeping, sampling, the hops to the detokenizer and back);
the model's step is a bare `SimpleSession` forward plus argmax on the same weights and
shapes. Medians, so that a noisy machine's stalls do not dominate.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..model.generate import SimpleSession
from ..model.network import DeepseekV4
from ..runtime.engine import Engine


def engine_decode_step(engine: Engine, prompt: list[int], steps: int) -> float:
    """Median seconds per decoded token over one streamed request of `steps` tokens."""
    times, counts = [], []
    for chunk in engine.generate(input_ids=prompt, stream=True, sampling_params={
            "max_new_tokens": steps, "temperature": 0, "ignore_eos": True}):
        times.append(time.perf_counter())
        counts.append(len(chunk["output_ids"]))
    per_token = [(t1 - t0) / n for t0, t1, n in zip(times, times[1:], counts[1:]) if n]
    if not per_token:
        raise ValueError("decode overhead needs at least two decode steps")
    return statistics.median(per_token)


def model_decode_step(model: DeepseekV4, prompt: list[int], steps: int) -> float:
    """Median seconds of one forward + argmax of a single request, prefilled with `prompt`."""
    session = SimpleSession(model, max_tokens=len(prompt) + steps + 1, max_requests=1)
    logits = session.prefill(0, prompt)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token = int(torch.argmax(logits))
        logits = session.extend({0: [token]})[0]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_overhead(engine: Engine, model: DeepseekV4, prompt: list[int], steps: int) -> dict:
    model_decode_step(model, prompt, min(steps, 4))  # warm-up
    model_s = model_decode_step(model, prompt, steps)
    engine_s = engine_decode_step(engine, prompt, steps)
    return {"steps": steps, "engine_step_ms": engine_s * 1e3, "model_step_ms": model_s * 1e3,
            "overhead_pct": 100 * (engine_s - model_s) / model_s}
