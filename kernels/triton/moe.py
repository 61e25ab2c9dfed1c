"""Fused routed experts: align -> grouped GEMM W1/W3 with the SwiGLU clamp -> grouped GEMM W2
with the routing weight -> combine.

1. `align` sorts the `T*k` token slots by expert and pads every expert's run to `BLOCK_M`,
   on the device and without a host sync: `sorted_slots [S_max]` (slot id, `T*k` = padding)
   and `block_expert [NB_max]` (expert of each BLOCK_M block, `E` past the last). Both are
   sized for the worst case, `T*k + E*(BLOCK_M-1)` slots, so the grid is fixed by T alone
   and the kernels' surplus blocks exit at once (CUDA-graph safe).
2. GEMM 1: per (block, I-tile) `h = silu(min(x W1^T, limit)) * clamp(x W3^T, +-limit)`, both
   products from one pass over x, stored per slot in x's dtype.
3. GEMM 2: per (block, D-tile) `y = (h W2^T) * w_slot`, fp32 per slot; the combine sums a
   token's k slots in fp32 in slot order (deterministic).

Weights stay as stored: dense, FP8 e4m3 with 128x128 blocks (E8M0 scales, or fp32 as in
the base checkpoints), or packed FP4 e2m1 with 1x32 E8M0 blocks. FP4 tiles go to
`tl.dot_scaled` (bf16 x e2m1; Triton upcasts to bf16 on Hopper) or, with
`fp4_dot_scaled=False`, are decoded in registers and fed to `tl.dot`.
"""

from __future__ import annotations

import torch

from ..quant import QuantizedWeight
from ._compat import as_bytes, cast, check_device, dot_operand, e8m0_to_f32, triton, tl
from .ref.moe import shared_expert  # noqa: F401  (three GEMMs through the dispatch: no kernel of its own)

DENSE, FP8, FP4 = 0, 1, 2
FORMAT_CODES = {"dense": DENSE, "fp8": FP8, "fp4": FP4}
MAX_CHUNK_TOKENS = 2048  # tokens per pass: bounds the [T*k, D] fp32 slot outputs


def align(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(`sorted_slots [S_max]` int32, `block_expert [NB_max]` int32) for routing `ids [T, k]`."""
    slots = ids.numel()
    flat = ids.flatten().long()
    counts = torch.zeros(num_experts, dtype=torch.long, device=ids.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    expert_of = flat[order]
    rank = torch.arange(slots, device=ids.device) - (counts.cumsum(0) - counts)[expert_of]
    max_blocks = triton.cdiv(slots + num_experts * (block_m - 1), block_m)
    sorted_slots = torch.full((max_blocks * block_m,), slots, dtype=torch.int32, device=ids.device)
    sorted_slots[(padded_end - padded)[expert_of] + rank] = order.to(torch.int32)
    block_start = torch.arange(max_blocks, device=ids.device) * block_m
    block_expert = torch.searchsorted(padded_end, block_start, right=True).to(torch.int32)  # E past the end
    return sorted_slots, block_expert


@triton.jit
def _weight_dot(acc, a, w_ptr, s_ptr, offs_n, n_mask, k0, K, stride_wn, stride_sn, stride_sk,
                FMT: tl.constexpr, SCALE_E8M0: tl.constexpr, FP4_DOT_SCALED: tl.constexpr, BLOCK_K: tl.constexpr):
    """`acc += a [BM, BK] . W[offs_n, k0:k0+BK]^T` for one expert's weight `[N, K]` as stored."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_mask = offs_k < K
    if FMT == 2:  # packed e2m1 [N, K/2], E8M0 scales [N, K/32]
        offs_kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_kb[None, :],
                         mask=n_mask[:, None] & (offs_kb[None, :] < K // 2), other=0)  # [BN, BK/2]
        offs_ks = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        scales = tl.load(s_ptr + offs_n[:, None] * stride_sn + offs_ks[None, :] * stride_sk,
                         mask=n_mask[:, None] & (offs_ks[None, :] < K // 32), other=127)  # [BN, BK/32]
        if FP4_DOT_SCALED:
            acc = tl.dot_scaled(a.to(tl.bfloat16), None, "bf16", tl.trans(packed), scales, "e2m1", acc=acc)
        else:
            w = _e2m1_tile(packed, scales)  # [BN, BK] fp32
            acc = tl.dot(dot_operand(a), dot_operand(tl.trans(w)), acc)
    else:
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # [BK, BN]
        if FMT == 1:  # e4m3 with one scale (E8M0, or fp32 in base checkpoints) per 128x128 block
            s = tl.load(s_ptr + (offs_n // 128) * stride_sn + (k0 // 128) * stride_sk, mask=n_mask, other=127)
            s = e8m0_to_f32(s) if SCALE_E8M0 else s.to(tl.float32)
            acc += tl.dot(dot_operand(a), dot_operand(w)) * s[None, :]
        else:
            acc = tl.dot(dot_operand(a), dot_operand(w), acc)
    return acc


@triton.jit
def _e2m1_tile(packed, scales):
    """Packed e2m1 `[BN, BK/2]` (low nibble = even column) and E8M0 `[BN, BK/32]` -> fp32 `[BN, BK]`."""
    lo, hi = _e2m1(packed & 0xF), _e2m1(packed >> 4)
    w = tl.reshape(tl.join(lo, hi), (packed.shape[0], 2 * packed.shape[1]))
    w = tl.reshape(w, (packed.shape[0], scales.shape[1], 32)) * e8m0_to_f32(scales)[:, :, None]
    return tl.reshape(w, (packed.shape[0], 2 * packed.shape[1]))


@triton.jit
def _e2m1(code):
    """4-bit e2m1 codes -> fp32: sign, 2 exponent bits, 1 mantissa bit (0, .5, 1, 1.5, 2, 3, 4, 6)."""
    exponent = ((code >> 1) & 3).to(tl.int32)
    mantissa = (code & 1).to(tl.float32)
    power = ((exponent + 126) << 23).to(tl.float32, bitcast=True)  # 2**(exponent - 1), exactly
    magnitude = tl.where(exponent == 0, 0.5 * mantissa, (1.0 + 0.5 * mantissa) * power)
    return tl.where((code & 8) != 0, -magnitude, magnitude)


@triton.jit
def _gate_up_kernel(x_ptr, w1_ptr, s1_ptr, w3_ptr, s3_ptr, slots_ptr, block_expert_ptr, h_ptr,
                    num_slots, num_experts, N, K, limit, stride_xt,
                    stride_we, stride_wn, stride_se, stride_sn, stride_sk, stride_ht,
                    TOPK: tl.constexpr, FMT: tl.constexpr, SCALE_E8M0: tl.constexpr, FP4_DOT_SCALED: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """h[slot, n] = silu(min(x W1^T, limit)) * clamp(x W3^T, -limit, limit) for one expert block."""
    pid_b, pid_n = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_b)
    if expert >= num_experts:
        return
    slot = tl.load(slots_ptr + pid_b * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = slot < num_slots
    token = tl.where(valid, slot, 0) // TOPK
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w1, w3 = w1_ptr + expert * stride_we, w3_ptr + expert * stride_we
    s1, s3 = s1_ptr + expert * stride_se, s3_ptr + expert * stride_se
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_ptr + token[:, None] * stride_xt + offs_k[None, :],
                    mask=valid[:, None] & (offs_k[None, :] < K), other=0.0).to(tl.float32)  # [BM, BK]
        gate = _weight_dot(gate, a, w1, s1, offs_n, n_mask, k0, K, stride_wn, stride_sn, stride_sk,
                           FMT, SCALE_E8M0, FP4_DOT_SCALED, BLOCK_K)
        up = _weight_dot(up, a, w3, s3, offs_n, n_mask, k0, K, stride_wn, stride_sn, stride_sk,
                         FMT, SCALE_E8M0, FP4_DOT_SCALED, BLOCK_K)
    gate = tl.minimum(gate, limit)
    h = gate * tl.sigmoid(gate) * tl.clamp(up, -limit, limit)
    tl.store(h_ptr + slot[:, None] * stride_ht + offs_n[None, :], cast(h, h_ptr.dtype.element_ty),
             mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _down_kernel(h_ptr, w_ptr, s_ptr, slots_ptr, block_expert_ptr, route_w_ptr, y_ptr,
                 num_slots, num_experts, N, K, stride_ht,
                 stride_we, stride_wn, stride_se, stride_sn, stride_sk, stride_yt,
                 FMT: tl.constexpr, SCALE_E8M0: tl.constexpr, FP4_DOT_SCALED: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[slot, n] = w_slot * (h[slot] W2^T)[n], fp32, for one expert block."""
    pid_b, pid_n = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_b)
    if expert >= num_experts:
        return
    slot = tl.load(slots_ptr + pid_b * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = slot < num_slots
    row = tl.where(valid, slot, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w, s = w_ptr + expert * stride_we, s_ptr + expert * stride_se
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(h_ptr + row[:, None] * stride_ht + offs_k[None, :],
                    mask=valid[:, None] & (offs_k[None, :] < K), other=0.0).to(tl.float32)  # [BM, BK]
        acc = _weight_dot(acc, a, w, s, offs_n, n_mask, k0, K, stride_wn, stride_sn, stride_sk,
                          FMT, SCALE_E8M0, FP4_DOT_SCALED, BLOCK_K)
    acc *= tl.load(route_w_ptr + row, mask=valid, other=0.0)[:, None]
    tl.store(y_ptr + slot[:, None] * stride_yt + offs_n[None, :], acc, mask=valid[:, None] & n_mask[None, :])


def _weight_args(w: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor, int, bool, tuple[int, int, int]]:
    """(data, scale, format code, E8M0 scales?, scale strides (expert, row, column)) of stacked `[E, N, K]`."""
    if len(w.shape) != 3:
        raise ValueError(f"expert weights must be stacked [E, N, K], got shape {w.shape}")
    data = as_bytes(w.data.contiguous())
    if w.fmt == "dense":
        return data, data, DENSE, True, (0, 0, 0)
    e8m0 = w.scale.dtype in (torch.float8_e8m0fnu, torch.uint8)
    if w.fmt == "fp4" and not e8m0:
        raise ValueError(f"FP4 experts take E8M0 scales, got {w.scale.dtype}")
    scale = as_bytes(w.scale) if e8m0 else w.scale.float()
    return data, scale, FORMAT_CODES[w.fmt], e8m0, (scale.stride(0), scale.stride(1), scale.stride(2))


def _block_m(slots: int, experts: int) -> int:
    """Rows per expert block: small when few slots land on each expert (decode)."""
    per_expert = slots / experts
    return 16 if per_expert <= 16 else 32 if per_expert <= 64 else 64


def fused_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: QuantizedWeight, w3: QuantizedWeight,
              w2: QuantizedWeight, limit: float, fp4_dot_scaled: bool | None = None) -> torch.Tensor:
    """Routed experts of V4: `x [T, D]`, `ids/weights [T, k]`, `w1/w3 [E, I, D]`, `w2 [E, D, I]` -> `[T, D]`.

    `fp4_dot_scaled` (default: for bf16 x) feeds FP4 tiles to `tl.dot_scaled`, which takes bf16
    activations; otherwise they are decoded in registers, so fp32 x keeps fp32 products where
    `tl.dot` does (the interpreter)."""
    if fp4_dot_scaled is None:
        fp4_dot_scaled = x.dtype == torch.bfloat16
    t, d = x.shape
    if t > MAX_CHUNK_TOKENS:
        return torch.cat([fused_moe(x[a:a + MAX_CHUNK_TOKENS], ids[a:a + MAX_CHUNK_TOKENS],
                                    weights[a:a + MAX_CHUNK_TOKENS], w1, w3, w2, limit, fp4_dot_scaled)
                          for a in range(0, t, MAX_CHUNK_TOKENS)])
    experts, inter, wd = w1.shape
    if wd != d or w3.shape != w1.shape or w2.shape != (experts, d, inter) or not (w1.fmt == w3.fmt == w2.fmt):
        raise ValueError(f"expert weights w1 {w1.shape} {w1.fmt}, w3 {w3.shape} {w3.fmt}, w2 {w2.shape} {w2.fmt} "
                         f"do not fit x {tuple(x.shape)}")
    check_device(x, ids, weights, w1.data, w2.data)
    x = x.contiguous()
    k = ids.shape[1]
    slots = t * k
    block_m = _block_m(slots, experts)
    sorted_slots, block_expert = align(ids, experts, block_m)
    d1, s1, fmt, e8m0, (se1, sn1, sk1) = _weight_args(w1)
    d3, s3, *_ = _weight_args(w3)
    d2, s2, _, _, (se2, sn2, sk2) = _weight_args(w2)
    blocks = block_expert.numel()
    block_n, block_k = 64, 128
    h = torch.empty(slots, inter, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(blocks, triton.cdiv(inter, block_n))](
        x, d1, s1, d3, s3, sorted_slots, block_expert, h, slots, experts, inter, d, float(limit), x.stride(0),
        d1.stride(0), d1.stride(1), se1, sn1, sk1, h.stride(0),
        TOPK=k, FMT=fmt, SCALE_E8M0=e8m0, FP4_DOT_SCALED=fp4_dot_scaled, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k)
    y = torch.empty(slots, d, dtype=torch.float32, device=x.device)
    _down_kernel[(blocks, triton.cdiv(d, block_n))](
        h, d2, s2, sorted_slots, block_expert, weights.contiguous().float(), y, slots, experts, d, inter, h.stride(0),
        d2.stride(0), d2.stride(1), se2, sn2, sk2, y.stride(0),
        FMT=fmt, SCALE_E8M0=e8m0, FP4_DOT_SCALED=fp4_dot_scaled, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y.view(t, k, d).sum(1).to(x.dtype)
