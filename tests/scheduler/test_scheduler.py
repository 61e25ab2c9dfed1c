"""Scheduler + radix cache invariants on the tiny model (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from banyan.scheduler.pools import MemoryPools, PoolSizes
from banyan.scheduler.request import Request
from banyan.scheduler.sampling_params import SamplingParams
from banyan.scheduler.scheduler import Scheduler
from banyan.tests.conftest import random_prompt

P = 128


def make_scheduler(model, pages=40, slots=8, chunk=256, cache=True, policy="fcfs", swa_pages=None) -> Scheduler:
    pools = MemoryPools(model.cfg, PoolSizes(P, pages, swa_pages or pages, slots), torch.float32, "cpu")
    return Scheduler(model, pools, chunked_prefill_size=chunk, policy=policy, enable_prefix_cache=cache)


def run_all(sched: Scheduler, prompts: dict[str, list[int]], max_new=6, logprob=True) -> dict[str, Request]:
    reqs = {rid: Request(rid, ids, SamplingParams(max_new_tokens=max_new, temperature=0), return_logprob=logprob)
            for rid, ids in prompts.items()}
    for r in reqs.values():
        sched.add(r)
    for _ in range(10_000):
        if not sched.has_work():
            break
        sched.step()
    assert all(r.finished for r in reqs.values())
    return reqs


def assert_same_outputs(a: dict[str, Request], b: dict[str, Request]) -> None:
    for rid in a:
        assert a[rid].output_ids == b[rid].output_ids, rid
        assert max(abs(x - y) for x, y in zip(a[rid].output_logprobs, b[rid].output_logprobs)) <= 1e-4, rid


def shared_prefix_prompts() -> dict[str, list[int]]:
    base = random_prompt(3 * P + 50, seed=100)
    out = {}
    for i, cut in enumerate([P, 2 * P, 3 * P, 3 * P + 50, P + 1, 2 * P - 1]):
        out[f"r{i}"] = base[:cut] + random_prompt(20 + 7 * i, seed=200 + i)
    return out


def test_cache_is_transparent_and_matches_oracle(tiny_model, oracle):
    prompts = shared_prefix_prompts()
    cold = run_all(make_scheduler(tiny_model, cache=False), prompts)
    warm_sched = make_scheduler(tiny_model, cache=True)
    run_all(warm_sched, {"warmup": random_prompt(3 * P + 50, seed=100)}, max_new=1)
    warm = run_all(warm_sched, prompts)
    assert_same_outputs(cold, warm)
    # every page boundary of the shared prefix was a resume point
    assert sorted(r.cached_tokens for r in warm.values()) == [P, P, P, 2 * P, 3 * P, 3 * P]
    assert warm_sched.stats.cache_hit_tokens >= 11 * P
    for rid in ("r0", "r3"):
        ids = prompts[rid]
        with torch.no_grad():
            ref = oracle.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                                  pad_token_id=1)[0, len(ids):].tolist()
        assert warm[rid].output_ids == ref


@pytest.mark.parametrize("chunk", [1, 37, 1000])
def test_chunk_size_and_batching_do_not_change_outputs(tiny_model, chunk):
    prompts = shared_prefix_prompts()
    alone = {rid: run_all(make_scheduler(tiny_model, chunk=512), {rid: ids})[rid] for rid, ids in
             list(prompts.items())[:3]}
    together = run_all(make_scheduler(tiny_model, chunk=chunk), dict(list(prompts.items())[:3]))
    assert_same_outputs(alone, together)


def test_requests_arriving_together_compute_a_shared_prefix_once(tiny_model):
    shared = random_prompt(2 * P + 30, seed=7)
    prompts = {f"q{i}": shared + random_prompt(10 + i, seed=300 + i) for i in range(4)}
    sched = make_scheduler(tiny_model, chunk=1000)
    together = run_all(sched, prompts)
    # later arrivals waited for the first one's full pages of the shared prefix and reused them
    assert sched.stats.prefill_tokens == len(prompts["q0"]) + sum(len(prompts[f"q{i}"]) - 2 * P for i in (1, 2, 3))
    assert sorted(r.cached_tokens for r in together.values()) == [0, 2 * P, 2 * P, 2 * P]
    assert_same_outputs(run_all(make_scheduler(tiny_model, cache=False), prompts), together)


def test_pools_are_full_again_after_flush(tiny_model):
    sched = make_scheduler(tiny_model)
    run_all(sched, shared_prefix_prompts())
    assert sched.cache.num_nodes > 0
    assert sched.flush_cache()
    assert sched.pools.is_full()


def test_small_pool_retracts_and_evicts_but_outputs_match(tiny_model):
    prompts = {f"q{i}": random_prompt(200 + 30 * i, seed=300 + i) for i in range(5)}
    roomy = run_all(make_scheduler(tiny_model, pages=40), prompts, max_new=40)
    tight_sched = make_scheduler(tiny_model, pages=7, chunk=512)
    tight = run_all(tight_sched, prompts, max_new=40)
    assert_same_outputs(roomy, tight)
    usage = tight_sched.usage()
    assert usage["retractions"] > 0
    assert tight_sched.flush_cache() and tight_sched.pools.is_full()


def test_abort_frees_pages(tiny_model):
    sched = make_scheduler(tiny_model, pages=20)
    keep = Request("keep", random_prompt(150, seed=1), SamplingParams(max_new_tokens=30, temperature=0))
    drop = Request("drop", random_prompt(300, seed=2), SamplingParams(max_new_tokens=30, temperature=0))
    sched.add(keep)
    sched.add(drop)
    for _ in range(3):
        sched.step()
    free_before = sched.pools.pages.available
    assert sched.abort("drop")
    assert sched.pools.pages.available > free_before
    outs = sched.step()
    assert any(o.rid == "drop" and o.finish.kind == "abort" for o in outs)
    while sched.has_work():
        sched.step()
    assert keep.finish.kind == "length" and len(keep.output_ids) == 30
    assert not sched.abort("unknown")
    assert sched.flush_cache() and sched.pools.is_full()


def test_stop_conditions(tiny_model):
    sched = make_scheduler(tiny_model)
    probe = run_all(sched, {"p": random_prompt(40, seed=5)}, max_new=8)["p"].output_ids
    stop_at = probe[3]
    req = Request("s", random_prompt(40, seed=5), SamplingParams(max_new_tokens=8, temperature=0,
                                                                  stop_token_ids=[stop_at]))
    sched.add(req)
    while sched.has_work():
        sched.step()
    assert req.output_ids == probe[:probe.index(stop_at) + 1]
    assert req.finish.kind == "stop" and req.finish.matched == stop_at


def test_seeded_sampling_is_reproducible(tiny_model):
    def draw(seed):
        sched = make_scheduler(tiny_model)
        r = Request("x", random_prompt(30, seed=9), SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9,
                                                                    seed=seed))
        sched.add(r)
        while sched.has_work():
            sched.step()
        return r.output_ids
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_lpm_policy_matches_fcfs_outputs(tiny_model):
    prompts = shared_prefix_prompts()
    fcfs = run_all(make_scheduler(tiny_model, policy="fcfs", slots=2), prompts)
    lpm = run_all(make_scheduler(tiny_model, policy="lpm", slots=2), prompts)
    assert_same_outputs(fcfs, lpm)
    with pytest.raises(ValueError, match="schedule policy"):
        make_scheduler(tiny_model, policy="random")


@pytest.mark.parametrize("cache", [True, False])
def test_small_sliding_window_pool_keeps_outputs(tiny_model, cache):
    """Pages behind every running request's window give their SWA KV back (private ones at
    once, cached ones by tombstoning), so a pool far smaller than the page pool suffices."""
    prompts = shared_prefix_prompts()
    roomy = run_all(make_scheduler(tiny_model, cache=cache), prompts, max_new=8)
    sched = make_scheduler(tiny_model, cache=cache, slots=3, swa_pages=5)
    small = run_all(sched, prompts, max_new=8)
    assert_same_outputs(roomy, small)
    assert sched.pools.swa_pages.capacity == 5 and sched.pools.pages.capacity == 40
    if cache:
        assert any(n.swa_page is None for n in sched.cache._nodes())  # interior windows were tombstoned
        assert sum(r.cached_tokens for r in small.values()) > 0
    assert sched.flush_cache() and sched.pools.is_full()


def test_sliding_window_pool_too_small_for_one_chunk_is_refused(tiny_model):
    with pytest.raises(ValueError, match="sliding-window pool"):
        make_scheduler(tiny_model, chunk=512, swa_pages=4)


def test_swa_fraction_multiplies_flash_capacity():
    from banyan.model.config import ModelConfig
    from banyan.scheduler.pools import sizes_from_budget

    cfg = ModelConfig.preset("flash")
    full = sizes_from_budget(cfg, 8 << 30, P, 16, torch.bfloat16)
    quarter = sizes_from_budget(cfg, 8 << 30, P, 16, torch.bfloat16, swa_fraction=0.25)
    assert full.num_swa_pages == full.num_pages
    assert quarter.num_pages > 2 * full.num_pages and quarter.num_swa_pages < quarter.num_pages // 3
    with pytest.raises(ValueError, match="swa_fraction"):
        sizes_from_budget(cfg, 8 << 30, P, 16, torch.bfloat16, swa_fraction=0)
