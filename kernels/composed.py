"""Fused ops as compositions of the dispatch's smaller ones.

A backend may implement one of these ops as a single kernel (the torch backend's CPU path
does, through `kernels.native`); one that does not runs this composition of its own
kernels, which is also the reference the fused versions are tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import dispatch
from .casts import fp32
from .indexer import QueryGroup
from .kv_formats import IndexerKeys, KVPool
from .norm import rms_norm
from .quant import QuantizedWeight
from .rope import apply_rope_
from .sparse_attention import KVIndex

Weight = QuantizedWeight | torch.Tensor


def attention_prologue(x: torch.Tensor, wq_a: Weight, q_norm: torch.Tensor, wq_b: Weight, wkv: Weight,
                       kv_norm: torch.Tensor, eps: float, heads: int, rope: torch.Tensor, pool: KVPool,
                       slots: torch.Tensor, qdq: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """V4's q and kv paths of `x [T, D]`: `qr = rms(wq_a x) * q_norm` `[T, R]`, `q = rope(rms(wq_b qr))`
    per head `[T, heads, hd]`, and `rope(rms(wkv x) * kv_norm)` inserted into `pool` at `slots`
    (`dispatch.kv_insert`). Returns `(q, qr)`."""
    qr = rms_norm(dispatch.linear(x, wq_a), q_norm, eps)
    q = dispatch.norm_rope(dispatch.linear(qr, wq_b).view(x.shape[0], heads, -1), None, eps, rope)
    dispatch.kv_insert(dispatch.linear(x, wkv), kv_norm, eps, rope, pool, slots, qdq)
    return q, qr


def attention_output(q: torch.Tensor, kv: KVPool, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: KVPool | None, extra_index: KVIndex | None, inv_rope: torch.Tensor | None,
                     wo_a: Weight, groups: int, wo_b: Weight) -> torch.Tensor:
    """`dispatch.sparse_attention` of `q [T, H, hd]`, then V4's grouped output projection `wo_a`
    (`groups` groups of `H*hd/groups` channels) and `wo_b` -> `[T, D]`."""
    out = dispatch.sparse_attention(q, kv, index, sink, scale, extra, extra_index, inv_rope)
    return dispatch.linear(dispatch.grouped_linear(out.view(q.shape[0], groups, -1), wo_a).flatten(1), wo_b)


def indexer_select(x: torch.Tensor, qr: torch.Tensor, wq_b: Weight, weights_proj: Weight, heads: int,
                   rope: torch.Tensor, keys: IndexerKeys, groups: Sequence[QueryGroup], topk: int) -> torch.Tensor:
    """The lightning indexer's queries and choice: `q = rope(wq_b qr)` `[T, heads, hd]`, head weights
    `weights_proj(x) / sqrt(heads * hd)` `[T, heads]`, then `dispatch.indexer_topk` -> `[T, K]` key rows."""
    q = apply_rope_(dispatch.linear(qr, wq_b).view(x.shape[0], heads, -1), rope)
    weights = dispatch.linear(x, weights_proj).float().mul_((heads * q.shape[-1]) ** -0.5)
    return dispatch.indexer_topk(q, weights, keys, groups, topk)


def gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
         tid2eid: torch.Tensor | None = None, input_ids: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """V4's router: fp32 gate logits `weight x` `[T, E]`, then `dispatch.route` -> (ids, weights) `[T, k]`."""
    return dispatch.route(F.linear(fp32(x), fp32(weight)), bias, top_k, route_scale, tid2eid, input_ids)


def moe_layer(x: torch.Tensor, gate_weight: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
              tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None, w1: QuantizedWeight, w3: QuantizedWeight,
              w2: QuantizedWeight, shared: tuple[Weight, Weight, Weight] | None, limit: float) -> torch.Tensor:
    """A whole MoE layer on one rank: `gate`, `dispatch.fused_moe` over the chosen experts, plus the
    shared expert `(w1, w3, w2)` when given -> `[T, D]`."""
    ids, weights = gate(x, gate_weight, bias, top_k, route_scale, tid2eid, input_ids)
    out = dispatch.fused_moe(x, ids, weights, w1, w3, w2, limit)
    return out if shared is None else out + dispatch.shared_expert(x, *shared, limit)


def hc_pre_norm(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
                eps: float, sinkhorn_iters: int, weight: torch.Tensor, out_eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`dispatch.hc_pre`, then the block's input RMS norm (`weight`, `out_eps`) of the collapsed rows:
    `(normed [T, D], post [T, n], comb [T, n, n])`."""
    collapsed, post, comb = dispatch.hc_pre(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters)
    return rms_norm(collapsed, weight, out_eps), post, comb


def gather_rows(rows: torch.Tensor, ring: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Compressor rows `[..., 2, W]` addressed by `source [4, ...]` int64 = (from this batch, flat
    token index into `rows [N, 2, W]`, flat row of `ring [R, 2, W]`, valid): the batch's row or the
    ring's."""
    from_batch, token, ring_row = source[0], source[1], source[2]
    shape, row = token.shape, rows.shape[1:]
    batch_rows = rows.index_select(0, token.reshape(-1)).view(*shape, *row)
    ring_rows = ring.view(-1, *row).index_select(0, ring_row.reshape(-1)).view(*shape, *row)
    return torch.where((from_batch != 0)[..., None, None], batch_rows, ring_rows)


def compress_emit(rows: torch.Tensor, ring: torch.Tensor, source: torch.Tensor, overlap: bool, weight: torch.Tensor,
                  eps: float, rope: torch.Tensor, pool: KVPool, slots: torch.Tensor, qdq: bool = False) -> None:
    """Close the compressor windows whose slots `source [4, E, S]` lists (`gather_rows`; invalid slots
    are empty): with `overlap` (CSA, S = 2m), the first m slots give their Ca half (channels `[0, d)`)
    and the last m their Cb half, then `dispatch.compress_close` into `pool` at `slots [E]`."""
    gathered = gather_rows(rows, ring, source)  # [E, S, 2, W]
    if overlap:
        m, d = gathered.shape[1] // 2, gathered.shape[-1] // 2
        gathered = torch.cat([gathered[:, :m, :, :d], gathered[:, m:, :, d:]], dim=1)
    score = gathered[:, :, 1].masked_fill((source[3] == 0).unsqueeze(-1), float("-inf"))
    dispatch.compress_close(gathered[:, :, 0], score, weight, eps, rope, pool, slots, qdq)


def hc_head_norm(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
                 eps: float, weight: torch.Tensor, out_eps: float) -> torch.Tensor:
    """`dispatch.hc_head`, then the model's final RMS norm (`weight`, `out_eps`): `[T, n, D] -> [T, D]`."""
    return rms_norm(dispatch.hc_head(streams, fn, scale, base, norm_eps, eps), weight, out_eps)
