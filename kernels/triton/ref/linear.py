"""Torch linears with the dispatch's signatures: `kernels.linear` with bf16/fp32 activations,
or after the official 1x128 FP8 activation quantisation (`act_fp8=True`). A plain tensor
weight is dense and goes straight to `F.linear` (the hot case at batch 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import linear as linear_ref
from ...casts import cast
from ...quant import QuantizedWeight
from ...kv_formats import act_quant_1x128


def _act_qdq(x: torch.Tensor) -> torch.Tensor:
    """`x [..., K]` through the official activation quantisation, back in x's dtype."""
    flat = x.reshape(-1, x.shape[-1])
    q, scale = act_quant_1x128(flat)
    return (q.float() * scale.repeat_interleave(128, 1)[:, :flat.shape[1]]).to(x.dtype).view_as(x)


def linear(x: torch.Tensor, weight: QuantizedWeight | torch.Tensor, act_fp8: bool = False) -> torch.Tensor:
    """`x [..., K]` times `weight [N, K]` -> `[..., N]`."""
    x = _act_qdq(x) if act_fp8 else x
    if isinstance(weight, torch.Tensor):
        return F.linear(x, cast(weight, x.dtype))
    return linear_ref.linear(x, weight)


def grouped_linear(x: torch.Tensor, weight: QuantizedWeight | torch.Tensor, act_fp8: bool = False) -> torch.Tensor:
    """`x [T, G, D]` times `weight [G*R, D]` per group -> `[T, G, R]` (V4's `wo_a`)."""
    weight = QuantizedWeight(weight) if isinstance(weight, torch.Tensor) else weight
    return linear_ref.grouped_linear(_act_qdq(x) if act_fp8 else x, weight)
