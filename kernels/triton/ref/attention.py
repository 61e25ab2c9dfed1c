"""Torch versions of the attention path's ops with the dispatch's signatures.

Sparse attention and the indexer's top-k are the references in `kernels.sparse_attention`
and `kernels.indexer`, extended here to FP8 pools (the rows a call touches are gathered and
dequantised first). The q/kv prologue with its paged insert and the compressor's window
close are fusions of the norm, RoPE, pooling and QDQ references. RoPE tables are the
complex `[T, rope_dim / 2]` rotations of `kernels.rope.rope_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ... import composed
from ... import indexer as indexer_ref
from ... import native
from ... import sparse_attention as attention_ref
from ...compress import softmax_pool
from ...indexer import QueryGroup
from ...norm import rms_norm
from ...rope import apply_rope_
from ...sparse_attention import KVIndex
from ...quant import QuantizedWeight
from ...kv_formats import FP8IndexerKeys, FP8KVCache, IndexerKeys, KVPool, kv_row_qdq, write_rows


def _float_pool(pool: KVPool, index: KVIndex) -> tuple[torch.Tensor, KVIndex]:
    """A float pool and index equivalent to (`pool`, `index`): FP8 rows are gathered and dequantised."""
    if not isinstance(pool, FP8KVCache):
        return pool, index
    t, k = index.indices.shape
    local = torch.arange(t * k, device=index.indices.device).view(t, k)
    return pool.read(index.rows.flatten()), KVIndex(torch.where(index.indices >= 0, local, -1), index.lengths)


def sparse_attention(q: torch.Tensor, kv: KVPool, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: KVPool | None = None, extra_index: KVIndex | None = None,
                     inv_rope: torch.Tensor | None = None) -> torch.Tensor:
    """`kernels.sparse_attention.sparse_attention` over float or FP8 pools; `inv_rope` (the inverse
    rotation table `[T, rd/2]`) is applied to the output's trailing dims."""
    kv, index = _float_pool(kv, index)
    if extra is not None:
        extra, extra_index = _float_pool(extra, extra_index)
    lists = () if extra_index is None else (extra, extra_index.indices, extra_index.lengths)
    out = native.sparse_attention(q, kv, index.indices, index.lengths, sink, scale, *lists, inv_rope=inv_rope)
    if out is not None:  # a few fp32 CPU queries: one native call, the inverse RoPE included
        return out
    out = attention_ref.sparse_attention(q, kv, index, sink, scale, extra, extra_index)
    return apply_rope_(out, inv_rope) if inv_rope is not None else out


def attention_output(q: torch.Tensor, kv: KVPool, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: KVPool | None, extra_index: KVIndex | None, inv_rope: torch.Tensor | None,
                     wo_a: QuantizedWeight | torch.Tensor, groups: int, wo_b: QuantizedWeight | torch.Tensor
                     ) -> torch.Tensor:
    """`kernels.composed.attention_output` over float or FP8 pools; a few fp32 CPU queries over dense
    weights take one native call (FP8 pools through their dequantised rows, as `sparse_attention`)."""
    if isinstance(wo_a, torch.Tensor) and isinstance(wo_b, torch.Tensor):
        kv, index = _float_pool(kv, index)
        if extra is not None:
            extra, extra_index = _float_pool(extra, extra_index)
        lists = (None, None) if extra_index is None else (extra_index.indices, extra_index.lengths)
        out = native.attention_output(q, kv, index.indices, index.lengths, sink, scale, extra, *lists, inv_rope,
                                      wo_a, groups, wo_b)
        if out is not None:
            return out
    return composed.attention_output(q, kv, index, sink, scale, extra, extra_index, inv_rope, wo_a, groups, wo_b)


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys: IndexerKeys, groups: Sequence[QueryGroup],
                 topk: int) -> torch.Tensor:
    """`kernels.indexer.indexer_topk` over float or FP8 keys."""
    if isinstance(keys, FP8IndexerKeys):
        rows = torch.cat([g.candidates.flatten() for g in groups]) if groups else q.new_zeros(0, dtype=torch.long)
        dense = keys.read(rows.clamp(min=0))
        starts, remapped = 0, []
        for g in groups:
            local = torch.arange(starts, starts + g.candidates.numel(), device=q.device).view_as(g.candidates)
            remapped.append(replace(g, candidates=torch.where(g.candidates >= 0, local, -1)))
            starts += g.candidates.numel()
        out = indexer_ref.indexer_topk(q, weights, dense, remapped, topk)
        return torch.where(out >= 0, rows.clamp(min=0)[out.clamp(min=0)], -1)
    return indexer_ref.indexer_topk(q, weights, keys, groups, topk)


def indexer_select(x: torch.Tensor, qr: torch.Tensor, wq_b: QuantizedWeight | torch.Tensor,
                   weights_proj: QuantizedWeight | torch.Tensor, heads: int, rope: torch.Tensor, keys: IndexerKeys,
                   groups: Sequence[QueryGroup], topk: int) -> torch.Tensor:
    """`kernels.composed.indexer_select`; a group of single fp32 CPU queries (a decode batch) over float
    keys and dense weights takes one native call."""
    if (len(groups) == 1 and groups[0].tokens.shape[1] == 1 and isinstance(keys, torch.Tensor)
            and isinstance(wq_b, torch.Tensor) and isinstance(weights_proj, torch.Tensor)):
        g = groups[0]
        rows = native.indexer_decode(x, qr, wq_b, weights_proj, heads, rope, keys, g.tokens, g.candidates,
                                     g.visible, topk)
        if rows is not None:
            return rows
    return composed.indexer_select(x, qr, wq_b, weights_proj, heads, rope, keys, groups, topk)


def norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float, rope: torch.Tensor | None) -> torch.Tensor:
    """RMS norm over the last dim of `x [T, H, D]` (weighted or not), then RoPE of its trailing dims."""
    if rope is not None:
        out = native.norm_rope(x, weight, eps, rope)
        if out is not None:
            return out
    y = rms_norm(x, weight, eps)
    return apply_rope_(y, rope) if rope is not None else y


def kv_insert(kv: torch.Tensor, weight: torch.Tensor, eps: float, rope: torch.Tensor, pool: KVPool,
              slots: torch.Tensor, qdq: bool = False) -> None:
    """`kv [T, D]` -> kv_norm -> RoPE -> (official FP8 QDQ of the no-RoPE dims) -> `pool[slots]`
    (slot -1: padding, not written). An FP8 pool always quantises."""
    if not qdq and isinstance(pool, torch.Tensor) and native.norm_rope(kv, weight, eps, rope, pool, slots) is not None:
        return
    _write_entries(apply_rope_(rms_norm(kv, weight, eps), rope), 2 * rope.shape[-1], pool, slots, qdq)


def attention_prologue(x: torch.Tensor, wq_a: QuantizedWeight | torch.Tensor, q_norm: torch.Tensor,
                       wq_b: QuantizedWeight | torch.Tensor, wkv: QuantizedWeight | torch.Tensor,
                       kv_norm: torch.Tensor, eps: float, heads: int, rope: torch.Tensor, pool: KVPool,
                       slots: torch.Tensor, qdq: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`kernels.composed.attention_prologue`; a few fp32 CPU tokens over dense weights and a float pool
    (no QDQ) take one native call."""
    if not qdq and isinstance(pool, torch.Tensor) and all(isinstance(w, torch.Tensor) for w in (wq_a, wq_b, wkv)):
        out = native.attention_prologue(x, wq_a, q_norm, wq_b, wkv, kv_norm, eps, heads, rope, pool, slots)
        if out is not None:
            return out
    return composed.attention_prologue(x, wq_a, q_norm, wq_b, wkv, kv_norm, eps, heads, rope, pool, slots, qdq)


def compressor_rows(x: torch.Tensor, wkv: QuantizedWeight | torch.Tensor, wgate: QuantizedWeight | torch.Tensor,
                    ape: torch.Tensor, ape_index: torch.Tensor) -> torch.Tensor:
    """A compressor's per-token rows `[T, 2, W]` fp32: `(wkv x, wgate x + ape[ape_index])` for `x [T, D]`,
    `wkv / wgate [W, D]` (plain tensors are dense), `ape [m, W]` fp32, `ape_index [T]`. A few tokens
    over dense fp32 CPU weights take one C call; otherwise two `dispatch.linear`s."""
    if isinstance(wkv, torch.Tensor) and isinstance(wgate, torch.Tensor):
        rows = native.compressor_rows(x, wkv, wgate, ape, ape_index)
        if rows is not None:
            return rows
    from ... import dispatch  # the backend's GEMM (imported late: dispatch imports this module by name)

    score = dispatch.linear(x, wgate).float().add_(ape.index_select(0, ape_index))
    return torch.stack([dispatch.linear(x, wkv).float(), score], dim=1)


def compress_close(kv: torch.Tensor, score: torch.Tensor, weight: torch.Tensor, eps: float, rope: torch.Tensor,
                   pool: KVPool, slots: torch.Tensor, qdq: bool = False) -> None:
    """Close compressor windows: softmax-pool `kv [E, S, d]` under `score [E, S, d]` over the S slots
    (per channel; -inf = empty slot), RMS-norm with `weight`, RoPE at the entry position (`rope
    [E, rd/2]`), optionally the FP8 QDQ, and store entry e at `pool[slots[e]]` (-1: not written)."""
    entries = rms_norm(softmax_pool(kv.float(), score.float()), weight, eps)
    _write_entries(apply_rope_(entries, rope), 2 * rope.shape[-1], pool, slots, qdq)


def compress_emit(rows: torch.Tensor, ring: torch.Tensor, source: torch.Tensor, overlap: bool, weight: torch.Tensor,
                  eps: float, rope: torch.Tensor, pool: KVPool, slots: torch.Tensor, qdq: bool = False) -> None:
    """`kernels.composed.compress_emit`; fp32 CPU rows into a float pool (no QDQ) take one native call."""
    if qdq or not isinstance(pool, torch.Tensor) or not native.compress_emit(rows, ring, source, overlap, weight, eps,
                                                                             rope, pool, slots):
        composed.compress_emit(rows, ring, source, overlap, weight, eps, rope, pool, slots, qdq)


def _write_entries(rows: torch.Tensor, rope_dim: int, pool: KVPool, slots: torch.Tensor, qdq: bool) -> None:
    if qdq and isinstance(pool, torch.Tensor):
        rows = kv_row_qdq(rows, rope_dim)
    write_rows(pool, slots, rows)
