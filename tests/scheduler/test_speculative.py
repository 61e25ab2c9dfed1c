"""Speculative decoding through the scheduler and runner with a scripted drafter: greedy
output equals plain decoding token for token whatever the drafts are, stops cut an accepted
block, and every page comes back."""

from __future__ import annotations

import random

import pytest

from banyan.model.drafters import ContextDrafter
from banyan.model.kv_cache import V4KVCache
from banyan.model.runner import ModelRunner
from banyan.scheduler.pools import MemoryPools, PoolSizes
from banyan.scheduler.request import Request
from banyan.scheduler.sampling_params import SamplingParams
from banyan.scheduler.scheduler import Scheduler
from banyan.tests.conftest import random_prompt
from banyan.tests.scheduler.test_scheduler import P, make_scheduler, run_all


class ScriptedDrafter(ContextDrafter):
    """Proposes the reference continuation, with a seeded share of wrong drafts."""

    def __init__(self, prompts: dict[str, list[int]], refs: dict[str, list[int]], wrong: float, seed: int = 0):
        self.prompts, self.refs, self.wrong = prompts, refs, wrong
        self.rng = random.Random(seed)
        self.calls = 0

    def propose(self, key, context, k):
        self.calls += 1
        done = len(context) - len(self.prompts[key])
        drafts = list(self.refs[key][done:done + k])
        drafts += [7] * (k - len(drafts))  # past the reference: anything
        for i in range(k):
            if self.rng.random() < self.wrong:
                drafts[i] = (drafts[i] + 1 + self.rng.randrange(1000)) % 129280
        return drafts, None


SIZES = PoolSizes(P, 40, 40, 8)


def spec_scheduler(model, drafter, k, **kwargs) -> Scheduler:
    runner = ModelRunner(model, SIZES.cache_shape(k), drafter=drafter)
    return Scheduler(runner, MemoryPools(SIZES), chunked_prefill_size=256, num_draft_tokens=k, check_integrity=True,
                     **kwargs)


def prompts_crossing_boundaries() -> dict[str, list[int]]:
    # outputs cross CSA windows (4), the page / HCA boundary at 128 and 256
    return {"a": random_prompt(100, seed=11), "b": random_prompt(240, seed=12), "c": random_prompt(5, seed=13)}


@pytest.fixture(scope="module")
def plain_outputs(tiny_model):
    prompts = prompts_crossing_boundaries()
    plain = run_all(make_scheduler(tiny_model), prompts, max_new=40, logprob=False)
    return prompts, {rid: r.output_ids for rid, r in plain.items()}


@pytest.mark.parametrize("k, wrong", [(1, 0.3), (3, 0.3), (3, 0.0), (2, 1.0)])
def test_greedy_speculative_output_equals_plain_decoding(tiny_model, plain_outputs, k, wrong):
    prompts, refs = plain_outputs
    drafter = ScriptedDrafter(prompts, refs, wrong, seed=k)
    sched = spec_scheduler(tiny_model, drafter, k)
    spec = run_all(sched, prompts, max_new=40, logprob=False)
    for rid in prompts:
        assert spec[rid].output_ids == refs[rid], rid
    st = sched.stats
    assert st.spec_verify_steps > 0 and drafter.calls > 0
    if wrong == 0.0:  # perfect drafts: K + 1 tokens per target forward
        assert st.spec_accepted_tokens == st.spec_draft_tokens
        assert st.steps <= 3 + 3 * -(-40 // (k + 1))  # prefill steps + verify steps for 3 requests
    if wrong == 1.0:
        assert st.spec_accepted_tokens == 0
    assert sched.flush_cache() and sched.pools.is_full()


def test_rings_one_row_short_of_window_plus_k_minus_1_corrupt_the_state(tiny_model, plain_outputs):
    """The ring bound is what makes rollback exact: one row fewer and outputs diverge."""
    prompts, refs = plain_outputs
    sched = spec_scheduler(tiny_model, ScriptedDrafter(prompts, refs, 0.3, seed=3), 3)
    sched.runner.kv = V4KVCache(tiny_model.cfg, SIZES.cache_shape(2))  # rings of window + 1 rows
    spec = run_all(sched, prompts, max_new=40, logprob=False)
    assert any(spec[rid].output_ids != refs[rid] for rid in prompts)


def test_a_stop_inside_an_accepted_block_truncates_it(tiny_model):
    prompts = {"s": random_prompt(60, seed=21)}
    refs = {"s": run_all(make_scheduler(tiny_model), prompts, max_new=20, logprob=False)["s"].output_ids}
    stop = refs["s"][9]
    drafter = ScriptedDrafter(prompts, refs, 0.0)
    sched = spec_scheduler(tiny_model, drafter, 3)
    req = Request("s", prompts["s"], SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=[stop]))
    sched.add(req)
    while sched.has_work():
        sched.step()
    assert req.output_ids == refs["s"][:refs["s"].index(stop) + 1]
    assert req.finish.kind == "stop"
    assert sched.flush_cache() and sched.pools.is_full()


def test_requests_with_penalties_decode_one_token_per_step(tiny_model):
    prompts = {"p": random_prompt(30, seed=31)}
    drafter = ScriptedDrafter(prompts, {"p": [1] * 10}, 0.0)
    sched = spec_scheduler(tiny_model, drafter, 2)
    req = Request("p", prompts["p"], SamplingParams(max_new_tokens=6, temperature=0, presence_penalty=0.5))
    sched.add(req)
    while sched.has_work():
        sched.step()
    assert len(req.output_ids) == 6 and sched.stats.spec_verify_steps == 0 and drafter.calls == 0


def test_speculation_needs_a_drafter_and_rings_to_match(tiny_model):
    sizes = PoolSizes(P, 10, 10, 2)
    with pytest.raises(ValueError, match="drafter"):
        Scheduler(ModelRunner(tiny_model, sizes.cache_shape(2)), MemoryPools(sizes), num_draft_tokens=2)
    with pytest.raises(ValueError, match="sized for 1 drafts, not 2"):
        Scheduler(ModelRunner(tiny_model, sizes.cache_shape(1), drafter=ScriptedDrafter({}, {}, 0)),
                  MemoryPools(sizes), num_draft_tokens=2)
