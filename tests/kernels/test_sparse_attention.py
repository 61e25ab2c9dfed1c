"""Sparse attention over explicit row lists against a per-query loop of the formula."""

import pytest
import torch

from banyan.kernels import native
from banyan.kernels import sparse_attention as sa
from banyan.kernels.rope import apply_rope_, rope_inv_freq, rope_table
from banyan.kernels.sparse_attention import KVIndex, sparse_attention


def reference(q, kv, index, sink, scale, extra=None, extra_index=None):
    """Per query: softmax over [its used rows' scores, sink]; output = probs . rows (float64)."""
    t, h, d = q.shape
    out = torch.zeros(t, h, d, dtype=torch.float64)
    for i in range(t):
        rows = [kv[r] for j, r in enumerate(index.indices[i].tolist()) if j < index.lengths[i] and r >= 0]
        if extra_index is not None:
            rows += [extra[r] for j, r in enumerate(extra_index.indices[i].tolist())
                     if j < extra_index.lengths[i] and r >= 0]
        keys = torch.stack(rows).double() if rows else torch.zeros(0, d, dtype=torch.float64)
        scores = torch.cat([q[i].double() @ keys.T * scale, sink.double().view(h, 1)], dim=1)  # [H, K+1]
        out[i] = torch.softmax(scores, dim=1)[:, :-1] @ keys
    return out


def ragged_case(gen, t=6, h=4, d=32, pool=50, ks=9, kx=5):
    q = torch.randn(t, h, d, generator=gen)
    kv, extra = torch.randn(pool, d, generator=gen), torch.randn(pool, d, generator=gen)
    idx = torch.randint(0, pool, (t, ks), generator=gen)
    idx[1, 3] = -1  # a hole inside the length
    index = KVIndex(idx, torch.tensor([9, 7, 0, 1, 9, 4]))  # row 2 sees no window row
    xi = torch.randint(0, pool, (t, kx), generator=gen)
    xi[:, 4] = -1
    extra_index = KVIndex(xi, torch.tensor([5, 0, 0, 2, 3, 4]))  # row 2 attends to the sink only
    return q, kv, index, torch.randn(h, generator=gen), extra, extra_index


def test_matches_the_formula_with_holes_ragged_lengths_and_sink_only_rows():
    gen = torch.Generator().manual_seed(0)
    q, kv, index, sink, extra, extra_index = ragged_case(gen)
    out = sparse_attention(q, kv, index, sink, 0.2, extra, extra_index)
    expected = reference(q, kv, index, sink, 0.2, extra, extra_index)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert out[2].abs().max() == 0  # nothing but the sink: zero output
    window_only = sparse_attention(q, kv, index, sink, 0.2)
    assert torch.allclose(window_only.double(), reference(q, kv, index, sink, 0.2), atol=1e-5)


def test_query_chunks_give_the_same_result(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    q, kv, index, sink, extra, extra_index = ragged_case(gen)
    whole = sparse_attention(q, kv, index, sink, 0.2, extra, extra_index)
    monkeypatch.setattr(sa, "ROW_BUDGET", 1)  # one query per chunk
    chunked = sparse_attention(q, kv, KVIndex(index.indices, index.lengths), sink, 0.2,
                               extra, KVIndex(extra_index.indices, extra_index.lengths))
    assert torch.equal(whole, chunked)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_inputs_score_in_fp32(dtype):
    gen = torch.Generator().manual_seed(2)
    q, kv, index, sink, extra, extra_index = ragged_case(gen)
    out = sparse_attention(q.to(dtype), kv.to(dtype), index, sink, 0.2, extra.to(dtype), extra_index)
    assert out.dtype == dtype
    expected = reference(q.to(dtype).float(), kv.to(dtype).float(), index, sink, 0.2,
                         extra.to(dtype).float(), extra_index)
    assert torch.allclose(out.double(), expected, atol=1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_empty_extra_list_is_the_window_alone():
    gen = torch.Generator().manual_seed(3)
    q, kv, index, sink, extra, _ = ragged_case(gen)
    none = KVIndex(torch.empty(q.shape[0], 0, dtype=torch.long), torch.zeros(q.shape[0], dtype=torch.long))
    assert torch.allclose(sparse_attention(q, kv, index, sink, 0.2, extra, none),
                          sparse_attention(q, kv, index, sink, 0.2), atol=1e-6)


@pytest.mark.parametrize("inverse_rope", [False, True])
def test_native_attention_matches_the_formula(inverse_rope):
    """What the torch backend runs for a few fp32 CPU queries: the formula, then the inverse RoPE."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(5)
    q, kv, index, sink, extra, extra_index = ragged_case(gen)
    table = rope_table(torch.arange(q.shape[0]) * 7, rope_inv_freq(8, 10000.0)).conj_physical() if inverse_rope else None
    for lists in ((), (extra, extra_index.indices, extra_index.lengths)):
        got = native.sparse_attention(q, kv, index.indices, index.lengths, sink, 0.2, *lists, inv_rope=table)
        want = reference(q, kv, index, sink, 0.2, *((extra, extra_index) if lists else ())).float()
        if table is not None:
            want = apply_rope_(want, table)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_native_attention_declines_what_it_does_not_take():
    gen = torch.Generator().manual_seed(4)
    q, kv, index, sink, extra, extra_index = ragged_case(gen, t=native.ATTENTION_MAX_QUERIES + 1)
    assert native.sparse_attention(q, kv, index.indices, index.lengths, sink, 0.2) is None  # too many queries
    q, kv, index, sink, _, _ = ragged_case(gen)
    assert native.sparse_attention(q.double(), kv, index.indices, index.lengths, sink, 0.2) is None
