"""Speculative decoding through the scheduler and runner with a scripted drafter: greedy
output equals plain decoding token for token whatever the drafts are, stops cut an accepted
block, and every page comes back."""

from __future__ import annotations

import random

import pytest

from banyan.model.drafters import ContextDrafter, MTPDrafter
from banyan.model.kv_cache import V4KVCache
from banyan.model.runner import ModelRunner, RunOutput, RunRequest
from banyan.scheduler.pools import MemoryPools, PoolSizes, sizes_from_budget
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


# ---- state written for rejected tokens, abort and retraction mid-speculation -------------------------

def poison_rejected(runner: ModelRunner, r: RunRequest, out: RunOutput, committed_too: bool = False) -> None:
    """Fill with NaN all state the step wrote past what it committed: the SWA rows, compressor
    and indexer ring rows, entries closed and page snapshots taken by rejected positions, and
    the MTP layer's provisional rows of its chain. `committed_too`: the last committed position
    as well (a control: that one is read, so NaN must show)."""
    p, nan = runner.page_size, float("nan")
    first = r.prefix_len + out.accepted + (0 if committed_too else 1)
    for pos in range(first, r.prefix_len + len(r.tokens)):
        row = r.swa_pages[pos // p] * p + pos % p
        for layer in runner.kv.layers:
            layer.swa[row] = nan
            for store in layer.stores():
                store.ring[r.slot, pos % store.ring_size] = nan
                if (pos + 1) % store.ratio == 0:  # an entry that a rejected token closed
                    store.entries[r.pages[pos // p] * (p // store.ratio) + (pos % p) // store.ratio] = nan
                if store.snapshots is not None and (pos + 1) % p == 0:
                    store.snapshots[r.swa_pages[pos // p]] = nan
    if isinstance(runner.drafter, MTPDrafter):  # the chain's rows past the committed tokens
        for pos in range(r.prefix_len + out.accepted + 1, r.prefix_len + out.accepted + r.speculation.next_k):
            runner.drafter.cache.swa[r.swa_pages[pos // p] * p + pos % p] = nan


def poisoning(sched: Scheduler, committed_too: bool = False) -> list[int]:
    """Poison after every verify step of `sched`; returns a list counting the poisoned steps."""
    runner, real_run, poisoned = sched.runner, sched.runner.run, []

    def run(requests: list[RunRequest]) -> list[RunOutput]:
        outputs = real_run(requests)
        for r, out in zip(requests, outputs):
            if r.speculation is not None and r.speculation.drafts and r.sampling is not None:
                poison_rejected(runner, r, out, committed_too)
                poisoned.append(len(r.tokens) - 1 - out.accepted)
        return outputs

    runner.run = run
    return poisoned


@pytest.mark.parametrize("drafter", ["scripted", "mtp"])
def test_state_written_for_rejected_tokens_is_never_read(tiny_model, plain_outputs, drafter):
    prompts, refs = plain_outputs
    k = 3
    drafts = ScriptedDrafter(prompts, refs, 0.3, seed=5) if drafter == "scripted" else \
        MTPDrafter(tiny_model, SIZES.cache_shape(k))
    sched = spec_scheduler(tiny_model, drafts, k)
    poisoned = poisoning(sched)
    spec = run_all(sched, prompts, max_new=40, logprob=False)
    assert sum(poisoned) > 0  # rejected positions were there to poison
    for rid in prompts:
        assert spec[rid].output_ids == refs[rid], rid
    assert sched.flush_cache() and sched.pools.is_full()


def test_poisoning_the_last_committed_position_shows(tiny_model, plain_outputs):
    """The control: the same poke one position earlier hits state that is read."""
    prompts, refs = plain_outputs
    sched = spec_scheduler(tiny_model, ScriptedDrafter(prompts, refs, 0.3, seed=5), 3)
    poisoning(sched, committed_too=True)
    spec = run_all(sched, {"a": prompts["a"]}, max_new=40, logprob=False)
    assert spec["a"].output_ids != refs["a"]


def test_abort_while_holding_lookahead_pages_frees_them(tiny_model, plain_outputs):
    prompts, refs = plain_outputs
    sched = spec_scheduler(tiny_model, ScriptedDrafter(prompts, refs, 0.3, seed=6), 3)
    reqs = {rid: Request(rid, ids, SamplingParams(max_new_tokens=40, temperature=0)) for rid, ids in prompts.items()}
    for r in reqs.values():
        sched.add(r)
    b = reqs["b"]  # 240 prompt tokens: its lookahead crosses the page boundary at 256
    for _ in range(60):
        sched.step()
        if b.spec_verify_steps and len(b.pages) > -(-len(b.seq) // P):
            break
    assert b.spec_verify_steps and len(b.pages) > -(-len(b.seq) // P), "b never held a lookahead page"
    free = sched.pools.pages.available
    assert sched.abort("b")
    assert sched.pools.pages.available > free
    while sched.has_work():
        sched.step()
    assert b.finish.kind == "abort"
    for rid in ("a", "c"):
        assert reqs[rid].output_ids == refs[rid], rid
    assert sched.flush_cache() and sched.pools.is_full()


def test_retraction_mid_speculation_keeps_outputs_and_frees_pools(tiny_model, plain_outputs):
    prompts, refs = plain_outputs
    sizes = PoolSizes(P, 5, 8, 8)  # too few pages for all three: requests are retracted while speculating
    runner = ModelRunner(tiny_model, sizes.cache_shape(3), drafter=ScriptedDrafter(prompts, refs, 0.3, seed=1))
    sched = Scheduler(runner, MemoryPools(sizes), chunked_prefill_size=256, num_draft_tokens=3, check_integrity=True)
    retracted, real_retract = [], sched._retract

    def retract(req: Request) -> None:
        retracted.append(req.spec_verify_steps > 0 and bool(req.drafts))
        real_retract(req)

    sched._retract = retract
    spec = run_all(sched, prompts, max_new=40, logprob=False)
    assert any(retracted), "no request was retracted while speculating"
    for rid in prompts:
        assert spec[rid].output_ids == refs[rid], rid
    assert sched.flush_cache() and sched.pools.is_full()


def allocated_bytes(kv: V4KVCache, drafter: MTPDrafter) -> int:
    """Bytes of every tensor the runner's paged state and the MTP drafter allocated."""
    tensors = [drafter.cache.swa, drafter.boundary]
    for layer in kv.layers:
        tensors.append(layer.swa)
        for store in layer.stores():
            tensors += [store.entries, store.ring] + ([store.snapshots] if store.snapshots is not None else [])
    return sum(t.nbytes for t in tensors)


@pytest.mark.parametrize("k", [1, 3])
def test_memory_budget_holds_the_speculative_state(tiny_model, k):
    cfg, budget = tiny_model.cfg, 24 << 20

    def used(draft_tokens: int) -> int:
        sizes = sizes_from_budget(cfg, budget, P, 4, tiny_model.dtype, chunk_tokens=256, draft_tokens=draft_tokens)
        shape = sizes.cache_shape(k)
        return allocated_bytes(V4KVCache(cfg, shape, dtype=tiny_model.dtype), MTPDrafter(tiny_model, shape))

    assert 0.9 * budget < used(k) <= budget
    assert used(0) > budget  # sized as if not speculating, the rings and the drafter overflow it
