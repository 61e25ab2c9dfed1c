"""V4 mixture of experts: sqrt-softplus scores, bias-corrected or hash top-k routing,
SwiGLU experts with clamps, one shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.linear import linear
from .config import ModelConfig
from .linear import Linear


# Below this many multiply-adds per projection (tokens x experts x I x D), computing every
# expert on every token beats gathering each expert's rows: on CPU the grouped matmul's
# per-expert work dominates tiny batches (tiny model, fp32, 1 thread: 37 vs 68 us at 1
# token, 65 vs 92 us at 16, 150 vs 117 us at 64). Real-size experts never qualify.
DENSE_MACS = 1 << 20


def _activation(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """V4's clamped SwiGLU, in fp32."""
    return F.silu(gate.float().clamp(max=limit)) * up.float().clamp(-limit, limit)


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, limit: float) -> torch.Tensor:
    return F.linear(_activation(F.linear(x, w1), F.linear(x, w3), limit).to(x.dtype), w2)


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
    """Routed experts stacked as `[E, I, D]` (w1, w3) and `[E, D, I]` (w2).

    Dispatch never reads routing back to the host. Small batches run every expert on every
    token and weight the outputs by a dense `[T, E]` routing matrix (zero for unchosen
    experts); larger ones sort the token-expert pairs by expert on the device, find each
    expert's rows with `searchsorted` and run `torch._grouped_mm`, which touches only the
    chosen experts' rows. Routed outputs are summed in fp32.
    """

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        e, i, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.limit, self.n_experts = cfg.swiglu_limit, e
        self.w1 = nn.Parameter(torch.zeros(e, i, d, dtype=dtype))
        self.w3 = nn.Parameter(torch.zeros(e, i, d, dtype=dtype))
        self.w2 = nn.Parameter(torch.zeros(e, d, i, dtype=dtype))

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: `[T, D]`, idx / weights: `[T, k]` -> `[T, D]`."""
        if isinstance(self.w1, Linear):  # stored format (`to_native`)
            return self._stored(x, idx, weights)
        if x.shape[0] * self.w1[0].numel() * self.w1.shape[0] <= DENSE_MACS:
            return self._dense(x, idx, weights)
        return self._grouped(x, idx, weights)

    def _mix(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Dense routing matrix `[T, E]` (zero for unchosen experts)."""
        return torch.zeros(x.shape[0], self.n_experts, device=x.device).scatter_(1, idx, weights)

    def _dense(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        h = _activation(torch.matmul(x, self.w1.mT), torch.matmul(x, self.w3.mT), self.limit)  # [E, T, I]
        y = torch.bmm(h.to(x.dtype), self.w2.mT)  # [E, T, D]
        mix = self._mix(x, idx, weights)  # [T, E]
        return torch.bmm(mix.unsqueeze(1), y.float().transpose(0, 1)).squeeze(1).to(x.dtype)

    def _stored(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """FP8/FP4 experts: the dense dispatch one expert at a time, each dequantised tile by
        tile (`kernels.linear.linear`), so no host sync and no dequantised copy. It runs every
        expert on every token: the CPU reference; a GPU wants the fused grouped kernel."""
        w1, w3, w2 = self.w1.quantized(), self.w3.quantized(), self.w2.quantized()
        mix = self._mix(x, idx, weights)  # [T, E]
        out = torch.zeros(x.shape, device=x.device)
        for e in range(self.n_experts):
            h = _activation(linear(x, w1[e]), linear(x, w3[e]), self.limit).to(x.dtype)  # [T, I]
            out.addcmul_(linear(h, w2[e]).float(), mix[:, e:e + 1])
        return out.to(x.dtype)

    def _grouped(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        k = idx.shape[1]
        experts, order = idx.flatten().sort(stable=True)  # [T*k] pairs grouped by expert
        ends = torch.searchsorted(experts, torch.arange(self.w1.shape[0], device=x.device), right=True,
                                  out_int32=True)  # [E] end of each expert's rows
        token = order // k
        rows = x.index_select(0, token)  # [T*k, D]
        h = _activation(torch._grouped_mm(rows, self.w1.mT, offs=ends), torch._grouped_mm(rows, self.w3.mT, offs=ends),
                        self.limit)
        y = torch._grouped_mm(h.to(x.dtype), self.w2.mT, offs=ends).float()  # [T*k, D]
        y = y * weights.flatten().index_select(0, order).unsqueeze(-1)
        return torch.zeros(x.shape, device=x.device).index_add_(0, token, y).to(x.dtype)


class SharedExpert(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size
        self.limit = cfg.swiglu_limit
        self.w1 = Linear(d, i, dtype)
        self.w3 = Linear(d, i, dtype)
        self.w2 = Linear(i, d, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(_activation(self.w1(x), self.w3(x), self.limit).to(x.dtype))


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
