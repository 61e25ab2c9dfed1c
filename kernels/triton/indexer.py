"""Lightning-indexer scores over float or FP8 keys, then the top-k as key-pool rows.

`I[t, j] = sum_h w[t, h] * relu(q[t, h] . k_j)` for the candidates of each query group
(`kernels.indexer.QueryGroup`: G rows of Tq queries sharing one candidate list of E rows,
query i of row g seeing the first `visible[g, i]` of them). One program scores a block of
a row's queries (one at decode, up to 256 / H in a prefill chunk) against BLOCK_N
candidates: `tl.dot(q [queries * H, d], k^T [d, BLOCK_N])`, ReLU, the head-weighted sum,
-inf where not visible; key blocks past every query's visible count skip the key loads.
The top-k then runs on the fixed-width, -inf padded scores with `torch.topk` (graph safe)
and maps local picks back to pool rows, best first, -1 where fewer are visible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..indexer import QueryGroup
from ._compat import check_device, dot_operand, pow2, triton, tl
from ..kv_formats import FP8IndexerKeys

IndexerKeys = torch.Tensor | FP8IndexerKeys


@triton.jit
def _indexer_scores_kernel(q_ptr, w_ptr, k_ptr, k32_ptr, cand_ptr, tok_ptr, vis_ptr, out_ptr,
                           TQ, E, H, D, stride_qt, stride_qh, stride_wt, stride_k, stride_cg, stride_tg, stride_og,
                           block_rows, block_bytes, FP8: tl.constexpr, BLOCK_T: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scores of BLOCK_T queries of one group row against BLOCK_N of its candidates: the queries
    share each key tile, their heads stacked into the MMA's M (BLOCK_T * BLOCK_H rows)."""
    qb, nb = tl.program_id(0), tl.program_id(1)
    blocks_per_row = tl.cdiv(TQ, BLOCK_T)
    g, offs_i = qb // blocks_per_row, (qb % blocks_per_row) * BLOCK_T + tl.arange(0, BLOCK_T)
    i_mask = offs_i < TQ
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    out = out_ptr + g * stride_og + offs_i[:, None] * E + offs_n[None, :]
    out_mask = i_mask[:, None] & (offs_n < E)[None, :]
    visible = tl.load(vis_ptr + g * stride_tg + offs_i, mask=i_mask, other=0)  # [BT]
    if nb * BLOCK_N >= tl.max(visible, axis=0):
        tl.store(out, tl.full((BLOCK_T, BLOCK_N), float("-inf"), tl.float32), mask=out_mask)
        return
    token = tl.load(tok_ptr + g * stride_tg + offs_i, mask=i_mask, other=0)
    offs_h, offs_d = tl.arange(0, BLOCK_H), tl.arange(0, BLOCK_D)
    h_mask, d_mask = offs_h < H, offs_d < D
    q = tl.load(q_ptr + token[:, None, None] * stride_qt + offs_h[None, :, None] * stride_qh + offs_d[None, None, :],
                mask=i_mask[:, None, None] & h_mask[None, :, None] & d_mask[None, None, :], other=0.0)
    q = tl.reshape(q.to(tl.float32), (BLOCK_T * BLOCK_H, BLOCK_D))
    w = tl.load(w_ptr + token[:, None] * stride_wt + offs_h[None, :], mask=i_mask[:, None] & h_mask[None, :],
                other=0.0).to(tl.float32)  # [BT, BH]
    rows = tl.load(cand_ptr + g * stride_cg + offs_n, mask=offs_n < E, other=-1)
    live = rows >= 0
    rows = tl.where(live, rows, 0)
    if FP8:  # [rows x D e4m3][rows x fp32 scale] per block
        base = (rows // block_rows) * block_bytes
        slot = rows % block_rows
        k = tl.load(k_ptr + (base + slot * D)[:, None] + offs_d[None, :], mask=live[:, None] & d_mask[None, :],
                    other=0).to(tl.float8e4nv, bitcast=True)
        scale = tl.load(k32_ptr + (base + block_rows * D + slot * 4) // 4, mask=live, other=0.0)
    else:
        k = tl.load(k_ptr + rows[:, None] * stride_k + offs_d[None, :], mask=live[:, None] & d_mask[None, :],
                    other=0.0)
        scale = tl.full((BLOCK_N,), 1.0, tl.float32)
    dots = tl.dot(dot_operand(q), dot_operand(tl.trans(k.to(tl.float32)))) * scale[None, :]  # [BT*BH, BN]
    dots = tl.reshape(tl.maximum(dots, 0.0), (BLOCK_T, BLOCK_H, BLOCK_N))
    score = tl.sum(dots * w[:, :, None], axis=1)  # [BT, BN]
    seen = live[None, :] & (offs_n[None, :] < visible[:, None])
    tl.store(out, tl.where(seen, score, float("-inf")), mask=out_mask)


def group_scores(q: torch.Tensor, weights: torch.Tensor, keys: IndexerKeys, group: QueryGroup) -> torch.Tensor:
    """fp32 scores `[G, Tq, E]` of one query group, -inf where not visible."""
    t, h, d = q.shape
    g, tq = group.tokens.shape
    e = group.candidates.shape[1]
    check_device(q, weights, group.candidates)
    out = torch.empty(g, tq, e, dtype=torch.float32, device=q.device)
    fp8 = isinstance(keys, FP8IndexerKeys)
    if fp8 and keys.dim != d:
        raise ValueError(f"indexer keys have {keys.dim} dims, q has {d}")
    k_ptr = keys.data if fp8 else keys
    k32 = keys.data.view(torch.float32) if fp8 else k_ptr
    tokens, visible = group.tokens.contiguous(), group.visible.contiguous().to(group.tokens.dtype)
    block_n, block_h = 64, max(16, pow2(h))
    block_t = min(pow2(tq), max(1, 256 // block_h))  # queries sharing a key tile (prefill): M <= 256
    _indexer_scores_kernel[(g * triton.cdiv(tq, block_t), triton.cdiv(e, block_n))](
        q, weights, k_ptr, k32, group.candidates, tokens, visible, out, tq, e, h, d,
        q.stride(0), q.stride(1), weights.stride(0), 0 if fp8 else keys.stride(0), group.candidates.stride(0),
        tokens.stride(0), out.stride(0), keys.block_rows if fp8 else 1, keys.data.shape[1] if fp8 else 0,
        FP8=fp8, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_D=pow2(d), num_warps=8 if block_t > 1 else 4)
    return out


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys: IndexerKeys, groups: Sequence[QueryGroup],
                 topk: int) -> torch.Tensor:
    """`kernels.indexer.indexer_topk` on the GPU: `[T, min(topk, max E)]` int64 pool rows, best first,
    -1 padded."""
    width = min(topk, max((g.candidates.shape[1] for g in groups), default=0))
    out = torch.full((q.shape[0], width), -1, dtype=torch.long, device=q.device)
    for group in groups:
        g, tq = group.tokens.shape
        k = min(topk, group.candidates.shape[1])
        if k == 0:
            continue
        vals, local = group_scores(q, weights, keys, group).topk(k, dim=-1)  # [G, Tq, k], best first
        rows = group.candidates.gather(1, local.view(g, tq * k)).view(g * tq, k)
        out[:, :k].index_copy_(0, group.tokens.reshape(-1), rows.masked_fill_(vals.view(-1, k) == float("-inf"), -1))
    return out
