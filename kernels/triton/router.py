"""V4's router epilogue: sqrt-softplus scores of the fp32 gate logits, experts by the
bias-corrected top-k (or `tid2eid[input_ids]` on hash layers), weights normalised to the
route scale. One program per block of tokens; the experts of a token fit one tile.

The gate GEMM itself (`x . W_g^T` in fp32) stays a library matmul: it is a plain dense GEMM.
"""

from __future__ import annotations

import torch

from ._compat import check_device, pow2, triton, tl


@triton.jit
def _softplus_sqrt(x):
    """sqrt(softplus(x)) with torch's threshold (softplus(x) = x for x > 20)."""
    return tl.sqrt(tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))))


@triton.jit
def _route_kernel(logits_ptr, bias_ptr, tid2eid_ptr, ids_in_ptr, ids_ptr, weights_ptr, T, E, route_scale,
                  stride_lt, TOPK: tl.constexpr, HASH: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_e = tl.arange(0, BLOCK_E)
    offs_k = tl.arange(0, BLOCK_K)
    t_mask = offs_t < T
    ids = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    chosen = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    if HASH:
        token = tl.load(ids_in_ptr + offs_t, mask=t_mask, other=0)
        ids = tl.load(tid2eid_ptr + token[:, None] * TOPK + offs_k[None, :],
                      mask=t_mask[:, None] & (offs_k[None, :] < TOPK), other=0).to(tl.int32)
        picked = tl.load(logits_ptr + offs_t[:, None] * stride_lt + ids, mask=t_mask[:, None], other=0.0)
        chosen = _softplus_sqrt(picked.to(tl.float32))
    else:
        e_mask = offs_e < E
        logits = tl.load(logits_ptr + offs_t[:, None] * stride_lt + offs_e[None, :],
                         mask=t_mask[:, None] & e_mask[None, :], other=0.0).to(tl.float32)  # [BT, BE]
        scores = _softplus_sqrt(logits)
        bias = tl.load(bias_ptr + offs_e, mask=e_mask, other=0.0).to(tl.float32)
        ranked = tl.where(e_mask[None, :], scores + bias[None, :], float("-inf"))
        for j in tl.static_range(TOPK):  # repeated argmax: the first of equal maxima, like torch.topk
            best = tl.max(ranked, axis=1)
            pick = tl.min(tl.where(ranked == best[:, None], offs_e[None, :], BLOCK_E), axis=1)  # [BT]
            hit = offs_e[None, :] == pick[:, None]
            ids = tl.where(offs_k[None, :] == j, pick[:, None], ids)
            chosen = tl.where(offs_k[None, :] == j, tl.sum(tl.where(hit, scores, 0.0), axis=1)[:, None], chosen)
            ranked = tl.where(hit, float("-inf"), ranked)
    k_mask = offs_k[None, :] < TOPK
    chosen = tl.where(k_mask, chosen, 0.0)
    chosen = chosen / (tl.sum(chosen, axis=1)[:, None] + 1e-20) * route_scale
    out = offs_t[:, None] * TOPK + offs_k[None, :]
    tl.store(ids_ptr + out, ids, mask=t_mask[:, None] & k_mask)
    tl.store(weights_ptr + out, chosen, mask=t_mask[:, None] & k_mask)


def route(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
          tid2eid: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """`logits [T, E]` -> (ids `[T, top_k]` int32, weights `[T, top_k]` fp32); see `ref.moe.route`."""
    hashed = tid2eid is not None
    if hashed == (bias is not None) or hashed != (input_ids is not None):
        raise ValueError("route takes either a bias (learned routing) or tid2eid with input_ids (hash routing)")
    check_device(logits)
    t, e = logits.shape
    ids = torch.empty(t, top_k, dtype=torch.int32, device=logits.device)
    weights = torch.empty(t, top_k, dtype=torch.float32, device=logits.device)
    block_t = 16
    dummy = logits  # never read: the unused pointers of the other routing mode
    _route_kernel[(triton.cdiv(t, block_t),)](
        logits, bias if bias is not None else dummy, tid2eid.contiguous() if hashed else dummy,
        input_ids if hashed else dummy, ids, weights, t, e, float(route_scale), logits.stride(0),
        TOPK=top_k, HASH=hashed, BLOCK_T=block_t, BLOCK_E=pow2(e), BLOCK_K=pow2(top_k))
    return ids, weights
