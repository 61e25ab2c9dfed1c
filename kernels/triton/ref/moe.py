"""Torch versions of V4's routing and routed experts, with the dispatch's signatures.

`route` and `fused_moe` are the torch backend the model runs on CPU (and on a GPU under
`BANYAN_KERNELS=torch`); neither reads anything back to the host. `fused_moe` picks one
of three strategies by the weights' format and the problem size:

* dense fp32 weights, a few tokens on CPU: each token through its own experts in one call of
  a C loop (`kernels.native.moe_experts`);
* dense weights, tiny problems (`T * E * I * D <= DENSE_MACS`): every expert on every token,
  weighted by a dense `[T, E]` routing matrix (zero for unchosen experts);
* dense weights, larger ones: token-expert pairs sorted by expert on the device, each
  expert's rows found with `searchsorted`, `torch._grouped_mm` over the chosen rows only;
* FP8/FP4 weights as stored: the dense strategy one expert at a time, each weight
  dequantised tile by tile (`kernels.linear.linear`), so no dequantised copy exists. It runs
  every expert on every token: a CPU path; a GPU wants the fused Triton kernel.

`fused_moe_sorted` touches only the chosen experts' rows of stored weights, at the price of
a host sync: the reference for large stored-format cases (tests, `gpu_check`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import composed, native
from ...linear import expert_linear, linear
from ...quant import QuantizedWeight

# Below this many multiply-adds per projection (tokens x experts x I x D), computing every
# expert on every token beats gathering each expert's rows: on CPU the grouped matmul's
# per-expert work dominates tiny batches (tiny model, fp32, 1 thread: 37 vs 68 us at 1
# token, 65 vs 92 us at 16, 150 vs 117 us at 64). Real-size experts never qualify.
DENSE_MACS = 1 << 20


def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """V4's clamped SwiGLU `silu(min(gate, limit)) * clamp(up, +-limit)`, in fp32."""
    return F.silu(gate.float().clamp(max=limit)) * up.float().clamp(-limit, limit)


def route(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
          tid2eid: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt-softplus scores of `logits [T, E]`; experts by biased top-k, or `tid2eid[input_ids]`
    on hash layers; weights = the chosen scores normalised to `route_scale`.
    `logits`, `bias` fp32, `tid2eid [V, k]` int64. Returns (ids `[T, k]` int64, in no particular
    order; weights `[T, k]` fp32)."""
    routed = native.route(logits, bias, top_k, route_scale, tid2eid, input_ids)  # a few CPU rows: one call
    if routed is not None:
        return routed
    scores = torch.sqrt(F.softplus(logits))  # logits and bias are fp32: no casts (each one an op per layer)
    if tid2eid is not None:
        ids = tid2eid[input_ids]
    else:
        ids = torch.topk(scores + bias, top_k, dim=-1, sorted=False).indices
    weights = scores.gather(1, ids)
    return ids, weights / (weights.sum(dim=-1, keepdim=True) + 1e-20) * route_scale


def fused_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: QuantizedWeight,
              w3: QuantizedWeight, w2: QuantizedWeight, limit: float) -> torch.Tensor:
    """`sum_k weights[t, k] * W2_e(swiglu(W1_e x, W3_e x))`, e = ids[t, k], without a host sync.

    x `[T, D]`, ids/weights `[T, k]`, w1/w3 `[E, I, D]`, w2 `[E, D, I]`; fp32 combine, x's dtype out."""
    if ids.dtype != torch.long:  # Triton's router gives int32
        ids = ids.long()
    if not w1.fmt == w3.fmt == w2.fmt == "dense":
        return _stored(x, ids, weights, w1, w3, w2, limit)
    out = native.moe_experts(x, ids, weights, w1.data, w3.data, w2.data, limit)
    if out is not None:
        return out
    experts = w1.shape[0]
    if x.shape[0] * w1.data[0].numel() * experts <= DENSE_MACS:
        return _dense(x, ids, weights, w1.data, w3.data, w2.data, limit)
    return _grouped(x, ids, weights, w1.data, w3.data, w2.data, limit)


def moe_layer(x: torch.Tensor, gate: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
              tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None, w1: QuantizedWeight, w3: QuantizedWeight,
              w2: QuantizedWeight, shared: tuple[QuantizedWeight | torch.Tensor, ...] | None, limit: float
              ) -> torch.Tensor:
    """`kernels.composed.moe_layer`; a few fp32 CPU tokens over dense weights take one native call."""
    if w1.fmt == w3.fmt == w2.fmt == "dense" and all(isinstance(w, torch.Tensor) for w in shared or ()):
        out = native.moe_layer(x, gate, bias, top_k, route_scale, tid2eid, input_ids, w1.data, w3.data, w2.data,
                               shared, limit)
        if out is not None:
            return out
    return composed.moe_layer(x, gate, bias, top_k, route_scale, tid2eid, input_ids, w1, w3, w2, shared, limit)


def shared_expert(x: torch.Tensor, w1: QuantizedWeight | torch.Tensor, w3: QuantizedWeight | torch.Tensor,
                  w2: QuantizedWeight | torch.Tensor, limit: float) -> torch.Tensor:
    """V4's shared expert `W2(swiglu(W1 x, W3 x))`: `x [T, D]`, `w1 / w3 [I, D]`, `w2 [D, I]` (plain
    tensors are dense) -> `[T, D]` in x's dtype. A few tokens over dense fp32 CPU weights go
    through the routed experts' C loop as one expert every token takes with weight 1 (one call
    instead of ~10 ops); otherwise three `dispatch.linear`s, so each backend runs its GEMM."""
    if isinstance(w1, torch.Tensor) and isinstance(w3, torch.Tensor) and isinstance(w2, torch.Tensor):
        out = native.swiglu_mlp(x, w1, w3, w2, limit)
        if out is not None:
            return out
    from ... import dispatch  # the backend's GEMM (imported late: dispatch imports this module by name)

    return dispatch.linear(swiglu(dispatch.linear(x, w1), dispatch.linear(x, w3), limit).to(x.dtype), w2)


def _mix(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: int) -> torch.Tensor:
    """Dense routing matrix `[T, E]` (zero for unchosen experts; an expert listed twice sums)."""
    return torch.zeros(x.shape[0], experts, device=x.device).scatter_add_(1, ids, weights)


def _dense(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
           w2: torch.Tensor, limit: float) -> torch.Tensor:
    h = swiglu(torch.matmul(x, w1.mT), torch.matmul(x, w3.mT), limit)  # [E, T, I]
    y = torch.bmm(h.to(x.dtype), w2.mT)  # [E, T, D]
    mix = _mix(x, ids, weights, w1.shape[0])  # [T, E]
    return torch.bmm(mix.unsqueeze(1), y.float().transpose(0, 1)).squeeze(1).to(x.dtype)


def _grouped(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
             w2: torch.Tensor, limit: float) -> torch.Tensor:
    k = ids.shape[1]
    experts, order = ids.flatten().sort(stable=True)  # [T*k] pairs grouped by expert
    ends = torch.searchsorted(experts, torch.arange(w1.shape[0], device=x.device), right=True,
                              out_int32=True)  # [E] end of each expert's rows
    token = order // k
    rows = x.index_select(0, token)  # [T*k, D]
    h = swiglu(torch._grouped_mm(rows, w1.mT, offs=ends), torch._grouped_mm(rows, w3.mT, offs=ends), limit)
    y = torch._grouped_mm(h.to(x.dtype), w2.mT, offs=ends).float()  # [T*k, D]
    y = y * weights.flatten().index_select(0, order).unsqueeze(-1)
    return torch.zeros(x.shape, device=x.device).index_add_(0, token, y).to(x.dtype)


def _stored(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: QuantizedWeight, w3: QuantizedWeight,
            w2: QuantizedWeight, limit: float) -> torch.Tensor:
    mix = _mix(x, ids, weights, w1.shape[0])  # [T, E]
    out = torch.zeros(x.shape, device=x.device)
    for e in range(w1.shape[0]):
        h = swiglu(linear(x, w1[e]), linear(x, w3[e]), limit).to(x.dtype)  # [T, I]
        out.addcmul_(linear(h, w2[e]).float(), mix[:, e:e + 1])
    return out.to(x.dtype)


def fused_moe_sorted(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: QuantizedWeight,
                     w3: QuantizedWeight, w2: QuantizedWeight, limit: float) -> torch.Tensor:
    """`fused_moe` over the chosen experts' rows only (reads the per-expert counts to the host)."""
    t, k = ids.shape
    flat = ids.flatten().long()
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    counts = torch.bincount(flat, minlength=w1.shape[0])
    xs = x[order // k]
    h = swiglu(expert_linear(xs, w1, counts), expert_linear(xs, w3, counts), limit)
    y = expert_linear(h.to(x.dtype), w2, counts).float()
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, order // k, y * weights.flatten()[order, None].float())
    return out.to(x.dtype)
