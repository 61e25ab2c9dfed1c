"""Sparse attention with sinks and the indexer's top-k, against explicit per-row math."""

from __future__ import annotations


import pytest
import torch

from banyan.kernels import dispatch
from banyan.kernels.indexer import QueryGroup
from banyan.kernels.rope import rope_inv_freq, rope_table
from banyan.kernels.sparse_attention import KVIndex
from banyan.kernels.kv_formats import FP8IndexerKeys, FP8KVCache


def _rows(pool, rows: list[int]) -> torch.Tensor:
    return pool.read(torch.tensor(rows)) if isinstance(pool, FP8KVCache) else pool[rows].float()


def _oracle(q, lists, sink, scale):
    """Row by row: softmax over the listed rows (first `length`, index >= 0) plus the sink logit."""
    out = torch.zeros(q.shape, dtype=torch.float32)
    for t in range(q.shape[0]):
        keys = [_rows(pool, [int(i) for i in index.indices[t, :int(index.lengths[t])] if i >= 0])
                for pool, index in lists]
        keys = torch.cat(keys) if keys else torch.zeros(0, q.shape[-1])
        scores = q[t].float() @ keys.T * scale  # [H, n]
        probs = torch.softmax(torch.cat([scores, sink[:, None]], 1), dim=1)[:, :-1]
        out[t] = probs @ keys
    return out


def _rotate_back(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    half = table.shape[-1]
    tail = torch.view_as_complex(x[..., -2 * half:].float().contiguous().unflatten(-1, (half, 2)))
    return torch.cat([x[..., :-2 * half], torch.view_as_real(tail * table[:, None]).flatten(-2)], -1)


def test_float_pools_with_padding_empty_rows_and_an_extra_list(backend, gen):
    t, h, d = 4, 5, 64
    kv = torch.randn(50, d, generator=gen).to(torch.bfloat16)
    extra = torch.randn(30, d, generator=gen).to(torch.bfloat16)
    q = torch.randn(t, h, d, generator=gen).to(torch.bfloat16)
    idx = torch.randint(0, 50, (t, 70), generator=gen)
    idx[0, 3] = idx[1, 50:] = -1  # -1 padding, inside and after the used part
    index = KVIndex(idx, torch.tensor([70, 60, 0, 33]))  # ragged; row 2 sees only the sink
    extra_index = KVIndex(torch.randint(0, 30, (t, 9), generator=gen), torch.tensor([9, 0, 0, 4]))
    sink = torch.randn(h, generator=gen)
    out = dispatch.sparse_attention(q, kv, index, sink, d ** -0.5, extra, extra_index)
    expected = _oracle(q, [(kv, index), (extra, extra_index)], sink, d ** -0.5)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected, atol=2e-2)
    assert torch.equal(out[2], torch.zeros(h, d, dtype=torch.bfloat16))


def test_fp8_pools_across_page_boundaries_with_the_inverse_rope_epilogue(backend, gen):
    t, h, d = 3, 16, 512
    window, entries = FP8KVCache.empty(64, page_rows=16), FP8KVCache.empty(16, page_rows=1)  # SWA + HCA pages
    window.write(torch.arange(64), torch.randn(64, d, generator=gen))
    entries.write(torch.arange(16), torch.randn(16, d, generator=gen))
    q = torch.randn(t, h, d, generator=gen).to(torch.bfloat16)
    swa = KVIndex(torch.arange(8, 48).repeat(t, 1), torch.tensor([40, 17, 1]))  # windows crossing pages 0-2
    hca = KVIndex(torch.arange(16).repeat(t, 1), torch.tensor([16, 3, 0]))
    sink = torch.randn(h, generator=gen)
    inverse = rope_table(torch.tensor([47, 200, 3000]), rope_inv_freq(64, 160000.0, 16.0)).conj_physical()
    out = dispatch.sparse_attention(q, window, swa, sink, d ** -0.5, entries, hca, inv_rope=inverse)
    expected = _rotate_back(_oracle(q, [(window, swa), (entries, hca)], sink, d ** -0.5), inverse)
    assert torch.allclose(out.float(), expected, atol=2e-2)


@pytest.mark.parametrize("splits", [2, 3])
def test_split_lists_merge_to_the_same_output(gen, splits):
    from banyan.kernels.triton.sparse_attn import sparse_attention

    t, h, d = 3, 4, 64
    kv = torch.randn(80, d, generator=gen)
    q = torch.randn(t, h, d, generator=gen)
    index = KVIndex(torch.randint(-1, 80, (t, 150), generator=gen), torch.tensor([150, 70, 0]))
    extra_index = KVIndex(torch.randint(0, 80, (t, 40), generator=gen), torch.tensor([0, 40, 5]))
    sink = torch.randn(h, generator=gen)
    whole = sparse_attention(q, kv, index, sink, 0.1, kv, extra_index, splits=1)
    split = sparse_attention(q, kv, index, sink, 0.1, kv, extra_index, splits=splits)
    assert torch.allclose(split, whole, atol=1e-5)
    assert torch.allclose(whole, _oracle(q, [(kv, index), (kv, extra_index)], sink, 0.1), atol=1e-5)


def test_sparse_attention_names_a_width_mismatch(gen):
    from banyan.kernels.triton.sparse_attn import sparse_attention

    index = KVIndex(torch.zeros(1, 4, dtype=torch.long), torch.tensor([4]))
    with pytest.raises(ValueError, match="dims"):
        sparse_attention(torch.randn(1, 2, 64), torch.randn(8, 32), index, torch.zeros(2), 1.0)


def _group(tokens: list[list[int]], candidates: torch.Tensor, visible: list[list[int]]) -> QueryGroup:
    seen = torch.tensor(visible)
    return QueryGroup(torch.tensor(tokens), candidates, seen, seen.numpy())


def _indexer_oracle(q, weights, keys, groups, topk):
    """Scores of every visible candidate, then the set of the best `topk` rows per query."""
    picks = {}
    for group in groups:
        for g in range(group.tokens.shape[0]):
            for i in range(group.tokens.shape[1]):
                token, seen = int(group.tokens[g, i]), int(group.visible[g, i])
                rows = [int(r) for r in group.candidates[g, :seen] if r >= 0]
                k = keys.read(torch.tensor(rows)) if isinstance(keys, FP8IndexerKeys) else keys[rows].float()
                scores = (torch.relu(q[token].float() @ k.T) * weights[token, :, None]).sum(0)
                best = scores.topk(min(topk, len(rows))).indices.tolist()
                picks[token] = [rows[j] for j in best]  # best first
    return picks


@pytest.mark.parametrize("fp8", [False, True])
def test_indexer_top_k_for_decode_rows_and_a_prefill_chunk(backend, gen, fp8):
    t, h, d, pool_rows = 6, 8, 128, 100
    q = torch.randn(t, h, d, generator=gen).to(torch.bfloat16)
    weights = torch.randn(t, h, generator=gen) * h ** -0.5
    dense = torch.randn(pool_rows, d, generator=gen)
    keys = FP8IndexerKeys.empty(pool_rows, block_rows=32) if fp8 else dense.to(torch.bfloat16)
    if fp8:
        keys.write(torch.arange(pool_rows), dense)
    candidates = torch.randperm(pool_rows, generator=gen)[:90].view(3, 30)
    candidates[1, 20:] = -1
    decode = _group([[0], [2], [4]], candidates, [[30], [20], [0]])
    prefill = _group([[1, 3, 5]], torch.randperm(pool_rows, generator=gen)[:70][None], [[9, 70, 0]])  # one chunk
    out = dispatch.indexer_topk(q, weights, keys, [decode, prefill], 16)
    assert out.shape == (t, 16)
    for token, rows in _indexer_oracle(q, weights, keys, [decode, prefill], 16).items():
        assert out[token].tolist() == rows + [-1] * (16 - len(rows))  # best first, then -1 padding


def test_a_v4_decode_step_h64_d512_window_plus_top_k(backend, gen):
    """Real per-token shapes: 64 heads, 512 dims, a 128-row window and 512 CSA entries, FP8 pools."""
    t, h, d = 2, 64, 512
    window, entries = FP8KVCache.empty(256, page_rows=128), FP8KVCache.empty(1024, page_rows=32)
    window.write(torch.arange(256), torch.randn(256, d, generator=gen))
    entries.write(torch.arange(1024), torch.randn(1024, d, generator=gen))
    q = torch.randn(t, h, d, generator=gen).to(torch.bfloat16)
    swa = KVIndex(torch.arange(100, 228).repeat(t, 1), torch.tensor([128, 128]))  # the window spans two pages
    top = KVIndex(torch.randint(0, 1024, (t, 512), generator=gen), torch.tensor([512, 300]))
    sink = torch.randn(h, generator=gen)
    out = dispatch.sparse_attention(q, window, swa, sink, d ** -0.5, entries, top)
    expected = _oracle(q, [(window, swa), (entries, top)], sink, d ** -0.5)
    assert torch.allclose(out.float(), expected, atol=2e-2 * expected.abs().max().item())
