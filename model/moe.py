"""V4 mixture of experts: sqrt-softplus scores, bias-corrected or hash top-k routing,
SwiGLU experts with clamps, one shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, limit: float) -> torch.Tensor:
    gate = F.linear(x, w1).float().clamp(max=limit)
    up = F.linear(x, w3).float().clamp(min=-limit, max=limit)
    return F.linear((F.silu(gate) * up).to(x.dtype), w2)


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig, hash_routed: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.scale = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size, dtype=dtype))
        self.hash_routed = hash_routed
        if hash_routed:
            self.register_buffer("tid2eid", torch.zeros(cfg.vocab_size, self.top_k, dtype=torch.long))
        else:
            self.bias = nn.Parameter(torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (expert indices `[T, k]`, weights `[T, k]` fp32)."""
        scores = torch.sqrt(F.softplus(F.linear(x.float(), self.weight.float())))
        if self.hash_routed:
            idx = self.tid2eid[input_ids]
        else:
            idx = torch.topk(scores + self.bias, self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, idx)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * self.scale
        return idx, weights


class Experts(nn.Module):
    """Routed experts stacked as `[E, I, D]` (w1, w3) and `[E, D, I]` (w2)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        e, i, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.limit = cfg.swiglu_limit
        self.w1 = nn.Parameter(torch.zeros(e, i, d, dtype=dtype))
        self.w3 = nn.Parameter(torch.zeros(e, i, d, dtype=dtype))
        self.w2 = nn.Parameter(torch.zeros(e, d, i, dtype=dtype))

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        flat_expert = idx.flatten()
        order = torch.argsort(flat_expert, stable=True)
        counts = torch.bincount(flat_expert, minlength=self.w1.shape[0]).tolist()
        token_of = order // idx.shape[1]
        weight_of = weights.flatten()[order]
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            tokens = token_of[start:start + count]
            y = swiglu(x[tokens], self.w1[expert], self.w3[expert], self.w2[expert], self.limit)
            out.index_add_(0, tokens, (y * weight_of[start:start + count, None]).to(x.dtype))
            start += count
        return out


class SharedExpert(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        self.limit = cfg.swiglu_limit
        self.w1 = nn.Linear(d, i, bias=False, dtype=dtype)
        self.w3 = nn.Linear(d, i, bias=False, dtype=dtype)
        self.w2 = nn.Linear(i, d, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.w1.weight, self.w3.weight, self.w2.weight, self.limit)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.gate = Gate(cfg, cfg.is_hash_layer(layer), dtype)
        self.experts = Experts(cfg, dtype)
        self.shared_experts = SharedExpert(cfg, dtype) if cfg.n_shared_experts else None

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        idx, weights = self.gate(x, input_ids)
        out = self.experts(x, idx, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
