"""Torch versions of V4's routing and routed experts, with the dispatch's signatures."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...linear import expert_linear
from ...quant import QuantizedWeight


def route(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
          tid2eid: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt-softplus scores of `logits [T, E]`; experts by biased top-k, or `tid2eid[input_ids]`
    on hash layers; weights = the chosen scores normalised to `route_scale`.
    Returns (ids `[T, k]` int32, weights `[T, k]` fp32)."""
    scores = torch.sqrt(F.softplus(logits.float()))
    if tid2eid is not None:
        ids = tid2eid[input_ids].long()
    else:
        ids = torch.topk(scores + bias.float(), top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    return ids.to(torch.int32), weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * route_scale


def fused_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: QuantizedWeight,
                w3: QuantizedWeight, w2: QuantizedWeight, limit: float) -> torch.Tensor:
    """`sum_k weights[t, k] * W2_e(silu(min(W1_e x, limit)) * clamp(W3_e x, +-limit))`, e = ids[t, k].

    x `[T, D]`, ids/weights `[T, k]`, w1/w3 `[E, I, D]`, w2 `[E, D, I]`; fp32 combine, x's dtype out."""
    t, k = ids.shape
    flat = ids.flatten().long()
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    counts = torch.bincount(flat, minlength=w1.shape[0])
    xs = x[order // k]
    gate = expert_linear(xs, w1, counts).float().clamp(max=limit)
    up = expert_linear(xs, w3, counts).float().clamp(-limit, limit)
    y = expert_linear((F.silu(gate) * up).to(x.dtype), w2, counts).float()
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, order // k, y * weights.flatten()[order, None].float())
    return out.to(x.dtype)
