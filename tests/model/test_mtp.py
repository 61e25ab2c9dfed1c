"""The MTP layer: its math, loading from every layout, DSpark refusal, and lossless
speculative decoding with it through the scheduler (cache on, off, and from a prefix hit)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from banyan.model.batch import ForwardBatch
from banyan.model.drafters import MTPDrafter
from banyan.model.generate import SimpleSession
from banyan.model.kv_cache import LayerCache
from banyan.model.loader import CheckpointError, load_model
from banyan.model.runner import ModelRunner
from banyan.scheduler.pools import MemoryPools, PoolSizes
from banyan.scheduler.scheduler import Scheduler
from banyan.tests.conftest import random_prompt
from banyan.tests.scheduler.test_scheduler import P, make_scheduler, run_all


def test_both_layouts_load_the_same_mtp_layer(tiny_model, tiny_transformers):
    other = load_model(tiny_transformers, progress=False)
    assert tiny_model.mtp is not None and other.mtp is not None
    mine, theirs = tiny_model.mtp.state_dict(), other.mtp.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert load_model(tiny_transformers, progress=False, mtp="no").mtp is None


@torch.inference_mode()
def test_mtp_logits_follow_the_formula(tiny_model):
    """logits = head(norm(hc_head(Block(e_proj(enorm(embed(x+1))) + h_proj(hnorm(X))))))."""
    model, cfg = tiny_model, tiny_model.cfg
    ids = random_prompt(40, seed=3)
    session = SimpleSession(model, max_tokens=64, max_requests=1)
    batch = ForwardBatch(torch.tensor(ids), [0], [len(ids)], [0], session.page_table[:1], session.page_table[:1],
                         all_logits=True)
    _, streams = model(batch, session.cache, return_streams=True)  # [T, n, D]
    nexts = ids[1:] + [5]
    mtp_batch = ForwardBatch(torch.tensor(nexts), [0], [len(ids)], [0], session.page_table[:1],
                             session.page_table[:1], all_logits=True)
    shape = session.cache.shape
    logits, _ = model.forward_mtp(mtp_batch, LayerCache(cfg, cfg.num_layers, shape, model.dtype, model.device),
                                  streams, shape.page_size)
    m = model.mtp[0]
    x0 = (m.e_proj(m.enorm(model.embed(torch.tensor(nexts)))).unsqueeze(1) + m.h_proj(m.hnorm(streams)))
    plan, rope = model._plan(mtp_batch, shape.page_size)
    x1 = m(x0, torch.tensor(nexts), plan, LayerCache(cfg, cfg.num_layers, shape, model.dtype, model.device), rope)
    flat = x1.flatten(1)
    pre = torch.sigmoid(flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + cfg.rms_norm_eps)
                        @ m.hc_head_fn.T * m.hc_head_scale + m.hc_head_base) + cfg.hc_eps
    hidden = (pre.unsqueeze(-1) * x1).sum(1)
    expected = model.head(m.norm(hidden)).float()
    assert logits.shape == (len(ids), cfg.vocab_size)
    assert (logits - expected).abs().max() < 1e-5
    assert m.attn.kind == "swa" and not m.ffn.gate.hash_routed


def test_a_dspark_drafter_is_refused_for_mtp(tiny_official, tmp_path):
    tensors = load_file(str(tiny_official / "model.safetensors"))
    tensors = {k: v for k, v in tensors.items() if not k.startswith("mtp.0.enorm")}
    tensors["mtp.0.main_proj.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    (tmp_path / "config.json").write_text((tiny_official / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="DSpark"):
        load_model(tmp_path, progress=False, mtp="yes")
    assert load_model(tmp_path, progress=False).mtp is None  # auto: serve without speculation


class RecordingMTPDrafter(MTPDrafter):
    """Keeps every proposal, by request."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.proposed: dict[str, list[list[int]]] = {}

    def draft(self, requests, outputs, streams) -> None:
        super().draft(requests, outputs, streams)
        for r, out in zip(requests, outputs):
            if out.drafts:
                self.proposed.setdefault(r.speculation.key, []).append(out.drafts)


def mtp_scheduler(model, k, cache=True) -> Scheduler:
    sizes = PoolSizes(P, 40, 40, 8)
    shape = sizes.cache_shape(k)
    runner = ModelRunner(model, shape, drafter=RecordingMTPDrafter(model, shape))
    return Scheduler(runner, MemoryPools(sizes), chunked_prefill_size=96, enable_prefix_cache=cache,
                     num_draft_tokens=k, check_integrity=True)


@pytest.mark.parametrize("k, cache", [(1, True), (3, False)])
def test_greedy_mtp_speculation_equals_plain_decoding(tiny_model, k, cache):
    prompts = {"a": random_prompt(200, seed=61), "b": random_prompt(30, seed=62)}
    plain = run_all(make_scheduler(tiny_model, chunk=96, cache=cache), prompts, max_new=24, logprob=False)
    sched = mtp_scheduler(tiny_model, k, cache)
    spec = run_all(sched, prompts, max_new=24, logprob=False)
    assert {r: spec[r].output_ids for r in prompts} == {r: plain[r].output_ids for r in prompts}
    assert sched.stats.spec_draft_tokens > 0
    assert sched.flush_cache() and sched.pools.is_full()


def _boundary_row(sched, prompt) -> torch.Tensor:
    """The drafter's KV row at the last position of the prompt's second cached page."""
    node = sched.cache.cache.match_prefix(prompt, max_pages=2).nodes[1]
    return sched.runner.drafter.cache.swa[node.swa_page * P + P - 1].clone()


@pytest.mark.parametrize("corrupt", [False, True])
def test_mtp_state_resumes_exactly_from_a_prefix_hit(tiny_model, corrupt):
    """At a cache hit the drafter recomputes its row before the boundary from the stored target
    streams and the request's own next token: its state (so its drafts) equals a cold run's.
    A wrong snapshot (`corrupt`) shows the check has power."""
    shared = random_prompt(2 * P, seed=71)
    prompt = shared + random_prompt(9, seed=72)
    cold = mtp_scheduler(tiny_model, 2)
    run_all(cold, {"x": prompt}, max_new=12, logprob=False)
    warm = mtp_scheduler(tiny_model, 2)
    run_all(warm, {"w": shared + random_prompt(5, seed=73)}, max_new=1, logprob=False)
    if corrupt:
        warm.runner.drafter.boundary.normal_()
    hit = run_all(warm, {"x": prompt}, max_new=12, logprob=False)["x"]
    assert hit.cached_tokens == 2 * P
    same = torch.allclose(_boundary_row(warm, prompt), _boundary_row(cold, prompt), atol=1e-5)
    assert same != corrupt
    if not corrupt:
        assert warm.runner.drafter.proposed["x"] == cold.runner.drafter.proposed["x"]
