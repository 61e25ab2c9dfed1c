"""Prompt-token logprobs (`logprob_start_len`) and prefill-only requests, against the oracle."""

from __future__ import annotations

import torch

from banyan.scheduler.request import Request
from banyan.scheduler.sampling_params import SamplingParams
from banyan.tests.conftest import random_prompt
from banyan.tests.scheduler.test_scheduler import P, make_scheduler


def drain(sched, reqs) -> dict:
    """Run to completion; the step outputs that carried prompt logprobs, by request id."""
    for r in reqs:
        sched.add(r)
    carried = {}
    while sched.has_work():
        for out in sched.step():
            if out.input_logprobs:
                assert out.rid not in carried, "prompt logprobs are sent once"
                carried[out.rid] = out.input_logprobs
    return carried


def oracle_prompt_logprobs(oracle_logits, ids: list[int]) -> list[float]:
    logprobs = torch.log_softmax(oracle_logits(ids), dim=-1)
    return [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_prompt_logprobs_match_oracle_across_chunks_and_cache(tiny_model, oracle_logits):
    base = random_prompt(2 * P + 30, seed=7)
    sched = make_scheduler(tiny_model, chunk=100)
    drain(sched, [Request("warm", base, SamplingParams(max_new_tokens=1, temperature=0))])
    start = P + 5  # inside the second cached page: the match must stop before it
    req = Request("r", base, SamplingParams(max_new_tokens=0), return_logprob=True, top_logprobs_num=3,
                  logprob_start_len=start)
    full = Request("f", base, SamplingParams(max_new_tokens=2, temperature=0), return_logprob=True,
                   logprob_start_len=0)
    carried = drain(sched, [req, full])
    assert carried == {"r": req.input_logprobs, "f": full.input_logprobs}
    expected = oracle_prompt_logprobs(oracle_logits, base)
    assert req.output_ids == [] and req.finish.kind == "length"
    assert req.cached_tokens == P  # one page reused, the rest recomputed for its logprobs
    assert len(req.input_logprobs) == len(base) - start
    assert max(abs(a - b) for a, b in zip(req.input_logprobs, expected[start - 1:])) < 1e-4
    assert all(len(top) == 3 and top[0][1] >= top[-1][1] for top in req.input_top_logprobs)
    assert full.input_logprobs[0] is None and len(full.input_logprobs) == len(base)
    assert max(abs(a - b) for a, b in zip(full.input_logprobs[1:], expected)) < 1e-4
    assert len(full.output_ids) == 2
    assert sched.pools.is_full() or sched.cache.cached_pages > 0
