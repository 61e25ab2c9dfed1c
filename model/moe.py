"""V4 mixture of experts: sqrt-softplus scores, bias-corrected or hash top-k routing,
SwiGLU experts with clamps, one shared expert."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import composed, dispatch
from ..kernels.quant import QuantizedWeight
from .config import ModelConfig
from .linear import Linear
from .parallel import SINGLE, Parallel
from .parallel_layers import expert_parallel_moe


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
        return composed.gate(x, self.weight, *self.routing(input_ids))

    def routing(self, input_ids: torch.Tensor) -> tuple:
        """The router's arguments after the gate weight: `(bias, top_k, scale, tid2eid, input_ids)`."""
        if self.hash_routed:
            return None, self.top_k, self.scale, self.tid2eid, input_ids
        return self.bias, self.top_k, self.scale, None, None


class Experts(nn.Module):
    """Routed experts stacked as `[E, I, D]` (w1, w3) and `[E, D, I]` (w2): dense parameters,
    or stored-format `Linear`s after `to_native`. `dispatch.fused_moe` runs them, never
    reading the routing back to the host (its torch backend picks a dense, grouped or
    stored-format strategy; see `kernels.triton.ref.moe`)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, parallel: Parallel = SINGLE) -> None:
        """A rank holds its `1/ep` of the experts under expert parallelism, else `1/tp` of each
        expert's intermediate dim."""
        super().__init__()
        e, i, d = cfg.n_routed_experts // parallel.ep, cfg.moe_intermediate_size, cfg.hidden_size
        i = i if parallel.ep > 1 else i // parallel.tp
        self.limit, self.n_experts = cfg.swiglu_limit, e
        self.w1 = nn.Parameter(torch.zeros(e, i, d, dtype=dtype))
        self.w3 = nn.Parameter(torch.zeros(e, i, d, dtype=dtype))
        self.w2 = nn.Parameter(torch.zeros(e, d, i, dtype=dtype))

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: `[T, D]`, idx / weights: `[T, k]` -> `[T, D]`."""
        return dispatch.fused_moe(x, idx, weights, *self.weights(), self.limit)

    def weights(self) -> tuple[QuantizedWeight, QuantizedWeight, QuantizedWeight]:
        """`(w1, w3, w2)` as the dispatch ops take them."""
        return _weight(self.w1), _weight(self.w3), _weight(self.w2)


def _weight(w: nn.Parameter | Linear) -> QuantizedWeight:
    return w.quantized() if isinstance(w, Linear) else QuantizedWeight(w)


class SharedExpert(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, parallel: Parallel = SINGLE) -> None:
        """`1/tp` of the intermediate dim under tensor parallelism alone; replicated under EP."""
        super().__init__()
        d, i = cfg.hidden_size, cfg.moe_intermediate_size // (parallel.tp if parallel.ep == 1 else 1)
        self.limit = cfg.swiglu_limit
        self.w1 = Linear(d, i, dtype)
        self.w3 = Linear(d, i, dtype)
        self.w2 = Linear(i, d, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.shared_expert(x, *self.weights(), self.limit)

    def weights(self) -> tuple[QuantizedWeight | torch.Tensor, ...]:
        """`(w1, w3, w2)` as the dispatch ops take them."""
        return self.w1.argument(), self.w3.argument(), self.w2.argument()


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, parallel: Parallel = SINGLE) -> None:
        """The gate is replicated (routing is bitwise equal on every rank). Under TP alone the
        routed and shared partial sums are all-reduced together; under EP the routed experts
        are dispatched to their owners (`expert_parallel_moe`) and the shared expert runs on
        every rank."""
        super().__init__()
        self.parallel, self.n_routed = parallel, cfg.n_routed_experts
        self.gate = Gate(cfg, cfg.is_hash_layer(layer), dtype)
        self.experts = Experts(cfg, dtype, parallel)
        self.shared_experts = SharedExpert(cfg, dtype, parallel) if cfg.n_shared_experts else None

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if self.parallel.ep == 1:
            out = dispatch.moe_layer(x, self.gate.weight, *self.gate.routing(input_ids), *self.experts.weights(),
                                     self.shared_experts.weights() if self.shared_experts is not None else None,
                                     self.experts.limit)
            return self.parallel.tp_comm.all_reduce(out)
        idx, weights = self.gate(x, input_ids)
        out = expert_parallel_moe(x, idx, weights, self.experts, self.parallel, self.n_routed)
        return out + self.shared_experts(x) if self.shared_experts is not None else out
