"""The fused attention ops: the torch backend's one-call native versions against the compositions
of the smaller ops (torch only), and the composition serving a backend without the fused op."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pytest
import torch

from banyan.kernels import composed, dispatch, mhc, native
from banyan.kernels.indexer import QueryGroup
from banyan.kernels.kv_formats import FP8KVCache, KVRowFormat
from banyan.kernels.quant import QuantizedWeight
from banyan.kernels.rope import rope_inv_freq, rope_table
from banyan.kernels.sparse_attention import KVIndex
from banyan.kernels.triton.ref import attention as torch_backend
from banyan.kernels.triton.ref import moe as moe_ref

T, D, R, H, HD, ROPE = 3, 64, 48, 4, 80, 16  # HD - ROPE: one FP8 quantisation block


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "torch")
    if native.library() is None:
        pytest.skip("no C compiler here")


@contextmanager
def _torch_only():
    """The native helpers off: every op of a composition runs torch's code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(native.ENV, "0")
        native.library.cache_clear()
        try:
            yield
        finally:
            native.library.cache_clear()


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _table(positions: list[int]) -> torch.Tensor:
    return rope_table(torch.tensor(positions), rope_inv_freq(ROPE, 10000.0))  # [T, ROPE/2] complex


def test_fused_prologue_equals_its_composition():
    gen = torch.Generator().manual_seed(1)
    x, wq_a, q_norm, wq_b = _randn(gen, T, D), _randn(gen, R, D), _randn(gen, R), _randn(gen, H * HD, R)
    wkv, kv_norm, rope = _randn(gen, HD, D), _randn(gen, HD), _table([0, 7, 1000])
    slots = torch.tensor([5, -1, 2])  # -1: padding, not written
    args = (x, wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H, rope)

    pool = torch.full((8, HD), 3.0)
    q, qr = torch_backend.attention_prologue(*args, pool, slots)
    assert native.attention_prologue(*args, pool.clone(), slots) is not None  # the one-call path ran
    with _torch_only():
        want_pool = torch.full((8, HD), 3.0)
        want_q, want_qr = composed.attention_prologue(*args, want_pool, slots)
    torch.testing.assert_close(qr, want_qr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool, want_pool, atol=1e-5, rtol=1e-5)
    assert torch.equal(pool[[0, 1, 3, 4, 6, 7]], torch.full((6, HD), 3.0))


def test_fused_prologue_declines_what_it_does_not_take():
    gen = torch.Generator().manual_seed(2)
    x, wq_a, q_norm, wq_b = _randn(gen, T, D), _randn(gen, R, D), _randn(gen, R), _randn(gen, H * HD, R)
    wkv, kv_norm, rope, pool = _randn(gen, HD, D), _randn(gen, HD), _table([1, 2, 3]), torch.zeros(4, HD)
    slots = torch.tensor([0, 1, 2])
    many = _randn(gen, native.PROLOGUE_MAX_TOKENS + 1, D)
    assert native.attention_prologue(many, wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H, _table([0] * len(many)),
                                     pool, torch.zeros(len(many), dtype=torch.long)) is None
    assert native.attention_prologue(x, wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H + 1, rope, pool, slots) is None
    assert native.attention_prologue(x.double(), wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H, rope, pool, slots) is None
    # the QDQ insert is the composition's: it quantises the no-RoPE dims on the way in
    q, _ = torch_backend.attention_prologue(x, wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H, rope, pool, slots, True)
    plain = torch.zeros(4, HD)
    torch_backend.attention_prologue(x, wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H, rope, plain, slots)
    assert not torch.equal(pool, plain)
    torch.testing.assert_close(pool, plain, atol=0.2, rtol=0.1)


def _attention_case(gen: torch.Generator):
    q = _randn(gen, T, H, HD)
    kv, extra = _randn(gen, 30, HD), _randn(gen, 12, HD)
    window = KVIndex(torch.tensor([[3, 2, 1, 0], [9, 8, -1, -1], [20, 19, 18, 17]]), torch.tensor([4, 2, 3]))
    entries = KVIndex(torch.tensor([[0, 5, 7], [-1, -1, -1], [11, 2, -1]]), torch.tensor([3, 0, 2]))
    return q, kv, window, _randn(gen, H), extra, entries, _table([3, 9, 20]).conj()


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("with_extra", [True, False])
def test_fused_attention_output_equals_its_composition(groups, with_extra):
    gen = torch.Generator().manual_seed(groups)
    q, kv, window, sink, extra, entries, inverse = _attention_case(gen)
    wo_a, wo_b = _randn(gen, groups * 8, H * HD // groups), _randn(gen, D, groups * 8)
    lists = (extra, entries) if with_extra else (None, None)
    got = torch_backend.attention_output(q, kv, window, sink, 0.1, *lists, inverse, wo_a, groups, wo_b)
    assert native.attention_output(q, kv, window.indices, window.lengths, sink, 0.1, lists[0],
                                   *((entries.indices, entries.lengths) if with_extra else (None, None)), inverse,
                                   wo_a, groups, wo_b) is not None
    with _torch_only():
        want = composed.attention_output(q, kv, window, sink, 0.1, *lists, inverse, wo_a, groups, wo_b)
    assert got.shape == (T, D)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fused_attention_output_reads_fp8_pools_and_declines_stored_weights():
    gen = torch.Generator().manual_seed(9)
    q, kv, window, sink, extra, entries, inverse = _attention_case(gen)
    wo_a, wo_b = _randn(gen, 16, H * HD // 2), _randn(gen, D, 16)
    pool = FP8KVCache.empty(30, 8, KVRowFormat(HD, ROPE))
    pool.write(torch.arange(30), kv)
    got = torch_backend.attention_output(q, pool, window, sink, 0.1, extra, entries, inverse, wo_a, 2, wo_b)
    with _torch_only():
        want = composed.attention_output(q, pool, window, sink, 0.1, extra, entries, inverse, wo_a, 2, wo_b)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    stored = torch_backend.attention_output(q, kv, window, sink, 0.1, extra, entries, inverse,
                                            QuantizedWeight(wo_a), 2, wo_b)  # not a plain tensor: the composition
    with _torch_only():
        plain = composed.attention_output(q, kv, window, sink, 0.1, extra, entries, inverse, wo_a, 2, wo_b)
    torch.testing.assert_close(stored, plain, atol=1e-4, rtol=1e-4)


def _decode_group(tokens: list[int], candidates: torch.Tensor, visible: list[int]) -> QueryGroup:
    vis = torch.tensor(visible).view(-1, 1)
    return QueryGroup(torch.tensor(tokens).view(-1, 1), candidates, vis, vis.numpy())


@pytest.mark.parametrize("topk", [4, 16, 200])
def test_fused_indexer_select_equals_its_composition(topk):
    gen = torch.Generator().manual_seed(topk)
    x, qr = _randn(gen, T, D), _randn(gen, T, R)
    wq_b, weights_proj, keys = _randn(gen, H * HD, R), _randn(gen, H, D), _randn(gen, 100, HD)
    rope = _table([40, 90, 160])
    candidates = torch.randperm(100, generator=gen)[:60].repeat(T, 1)
    candidates[1, 30:] = -1  # a shorter request
    group = _decode_group([2, 0, 1], candidates, [60, 30, 0])  # rows out of token order; one sees nothing
    args = (x, qr, wq_b, weights_proj, H, rope, keys, [group], topk)
    got = torch_backend.indexer_select(*args)
    assert native.indexer_decode(x, qr, wq_b, weights_proj, H, rope, keys, group.tokens, candidates,
                                 group.visible, topk) is not None
    with _torch_only():
        want = composed.indexer_select(*args)
    assert got.shape == want.shape == (T, min(topk, 60))
    # the same picks (their order may differ between near-equal scores: the sums round differently)
    assert torch.equal(got.sort(dim=1).values, want.sort(dim=1).values)
    assert torch.equal(got[:, 0], want[:, 0])
    assert got[1].eq(-1).all()  # token 1 is row 2, which sees no candidate
    assert got[0, :min(topk, 30)].ge(0).all()


def test_fused_indexer_select_leaves_prefill_chunks_to_the_composition():
    gen = torch.Generator().manual_seed(5)
    x, qr = _randn(gen, T, D), _randn(gen, T, R)
    wq_b, weights_proj, keys = _randn(gen, H * HD, R), _randn(gen, H, D), _randn(gen, 50, HD)
    vis = torch.tensor([[10, 11, 12]])
    chunk = QueryGroup(torch.arange(T).view(1, T), torch.arange(12).view(1, 12), vis, vis.numpy())
    args = (x, qr, wq_b, weights_proj, H, _table([40, 41, 42]), keys, [chunk], 4)
    got = torch_backend.indexer_select(*args)
    with _torch_only():
        assert torch.equal(got, composed.indexer_select(*args))


def test_a_backend_without_a_fused_op_runs_its_composition(monkeypatch):
    fake = type(sys)("banyan_fake_prologue")
    calls = []
    fake.norm_rope = lambda *a: calls.append("norm_rope") or torch_backend.norm_rope(*a)
    fake.kv_insert = lambda *a: calls.append("kv_insert") or torch_backend.kv_insert(*a)
    monkeypatch.setitem(sys.modules, "banyan_fake_prologue", fake)
    monkeypatch.setitem(dispatch._MODULES, "prologue", dict(dispatch._MODULES["prologue"]))
    dispatch.register("prologue", "fake", "banyan_fake_prologue")
    monkeypatch.setenv(dispatch.ENV, "torch,prologue=fake")
    gen = torch.Generator().manual_seed(3)
    x, wq_a, q_norm, wq_b = _randn(gen, T, D), _randn(gen, R, D), _randn(gen, R), _randn(gen, H * HD, R)
    wkv, kv_norm, pool = _randn(gen, HD, D), _randn(gen, HD), torch.zeros(4, HD)
    q, qr = dispatch.attention_prologue(x, wq_a, q_norm, wq_b, wkv, kv_norm, 1e-6, H, _table([1, 2, 3]), pool,
                                        torch.tensor([0, 1, 2]))
    assert calls == ["norm_rope", "kv_insert"] and q.shape == (T, H, HD) and qr.shape == (T, R)


def _moe_case(gen: torch.Generator, experts: int = 8, inter: int = 24):
    w1, w3 = _randn(gen, experts, inter, D) / 4, _randn(gen, experts, inter, D) / 4
    w2 = _randn(gen, experts, D, inter) / 4
    shared = (_randn(gen, inter, D) / 4, _randn(gen, inter, D) / 4, _randn(gen, D, inter) / 4)
    return _randn(gen, T, D), _randn(gen, experts, D), (QuantizedWeight(w1), QuantizedWeight(w3), QuantizedWeight(w2)), shared


@pytest.mark.parametrize("hashed", [False, True])
@pytest.mark.parametrize("with_shared", [True, False])
def test_fused_moe_layer_equals_its_composition(hashed, with_shared):
    gen = torch.Generator().manual_seed(hashed * 2 + with_shared)
    x, gate, experts, shared = _moe_case(gen)
    bias = None if hashed else _randn(gen, 8)
    tid2eid, ids = (torch.randint(0, 8, (50, 2), generator=gen), torch.tensor([3, 49, 0])) if hashed else (None, None)
    args = (x, gate, bias, 2, 1.5, tid2eid, ids, *experts, shared if with_shared else None, 10.0)
    got = moe_ref.moe_layer(*args)
    assert native.moe_layer(x, gate, bias, 2, 1.5, tid2eid, ids, *(w.data for w in experts),
                            shared if with_shared else None, 10.0) is not None
    with _torch_only():
        want = composed.moe_layer(*args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fused_moe_layer_declines_what_it_does_not_take():
    gen = torch.Generator().manual_seed(4)
    x, gate, experts, shared = _moe_case(gen)
    dense = tuple(w.data for w in experts)
    foreign = torch.tensor([3, 50, 0])  # outside the hash table: torch's indexing raises instead
    table = torch.randint(0, 8, (50, 2), generator=gen)
    assert native.moe_layer(x, gate, None, 2, 1.5, table, foreign, *dense, shared, 10.0) is None
    many = _randn(gen, native.MOE_MAX_TOKENS + 1, D)
    assert native.moe_layer(many, gate, _randn(gen, 8), 2, 1.5, None, None, *dense, shared, 10.0) is None
    assert native.moe_layer(x, gate.double(), _randn(gen, 8), 2, 1.5, None, None, *dense, shared, 10.0) is None


def test_fused_hc_pre_norm_equals_its_composition():
    gen = torch.Generator().manual_seed(6)
    n = 4
    streams, fn = _randn(gen, T, n, D), _randn(gen, (2 + n) * n, n * D) / 8
    scale, base, weight = torch.rand(3, generator=gen), _randn(gen, (2 + n) * n), _randn(gen, D)
    args = (streams, fn, scale, base, 1e-6, 1e-6, 20, weight, 1e-5)
    got = mhc.hc_pre_norm(*args)
    assert native.hc_pre(streams, fn, scale, base, 1e-6, 1e-6, 20, weight, 1e-5) is not None
    with _torch_only():
        want = composed.hc_pre_norm(*args)
    for ours, theirs in zip(got, want):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overlap", [True, False])
def test_fused_compress_emit_equals_its_composition(overlap):
    gen = torch.Generator().manual_seed(int(overlap))
    m, d = 4, HD
    width, window = (2 * d, 2 * m) if overlap else (d, m)
    rows, ring = _randn(gen, 6, 2, width), _randn(gen, 3, window, 2, width)  # 6 batch tokens, 3 request rings
    e = 2
    source = torch.stack([torch.randint(0, 2, (e, window), generator=gen), torch.randint(0, 6, (e, window), generator=gen),
                          torch.randint(0, 3 * window, (e, window), generator=gen), torch.ones(e, window, dtype=torch.long)])
    source[3, 0, :2] = 0  # a request's first window: leading slots before position 0 are empty
    weight, rope, slots = _randn(gen, d), _table([4, 8]), torch.tensor([3, -1])
    pool = torch.full((5, d), 2.0)
    torch_backend.compress_emit(rows, ring, source, overlap, weight, 1e-6, rope, pool, slots)
    assert native.compress_emit(rows, ring, source, overlap, weight, 1e-6, rope, pool.clone(), slots)
    with _torch_only():
        want = torch.full((5, d), 2.0)
        composed.compress_emit(rows, ring, source, overlap, weight, 1e-6, rope, want, slots)
    torch.testing.assert_close(pool, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(pool[3], torch.full((d,), 2.0)) and torch.equal(pool[[0, 1, 2, 4]], torch.full((4, d), 2.0))
    assert not native.compress_emit(rows.double(), ring, source, overlap, weight, 1e-6, rope, pool, slots)


def test_fused_hc_head_norm_equals_its_composition():
    gen = torch.Generator().manual_seed(7)
    n = 4
    streams, fn = _randn(gen, T, n, D), _randn(gen, n, n * D) / 8
    scale, base, weight = torch.rand(1, generator=gen), _randn(gen, n), _randn(gen, D)
    args = (streams, fn, scale, base, 1e-6, 1e-6)
    got, collapsed = mhc.hc_head_norm(*args, weight, 1e-5), mhc.hc_head(*args)
    assert native.hc_head(*args) is not None
    with _torch_only():
        want, want_collapsed = composed.hc_head_norm(*args, weight, 1e-5), mhc.hc_head(*args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(collapsed, want_collapsed, atol=1e-5, rtol=1e-5)
    assert native.hc_head(streams.double(), fn, scale, base, 1e-6, 1e-6) is None
