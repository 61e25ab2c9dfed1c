"""Block-FP8 GEMM: `y = x . dequant(W)^T`, W e4m3 `[N, K]` with one scale per 128x128 block
(E8M0 bytes or fp32), and V4's grouped `wo_a` (`G` GEMMs, group g multiplying `x[:, g]`
by weight rows `g*N : (g+1)*N`).

Activations are either bf16/fp32 (`act_fp8=False`: W8A16, the weight tile is upcast in
registers, which is the transformers oracle's arithmetic) or quantised inside the kernel
per 1x128 block with power-of-two scales (`act_fp8=True`: DeepSeek's official `linear`, an
FP8 x FP8 MMA). Per 128-wide K tile the kernel does `acc += dot(a, w) * s_a * s_w`, which
also promotes the accumulation to fp32 every 128 as DeepGEMM does on Hopper.

Small M (decode) splits K across programs so narrow matrices still fill the GPU; the
partial sums go to an fp32 buffer summed afterwards (deterministic, unlike atomics). From
`LIBRARY_MIN_M` rows on, with bf16 activations, the weight is dequantised once and cuBLAS
runs the GEMM, which is faster there (gpu-plan §1.2 K2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant import QuantizedWeight
from ._compat import INTERPRET, as_bytes, cast, check_device, dot_operand, e8m0_to_f32, pow2_ceil, triton, tl
from .ref.linear import grouped_linear as _ref_grouped
from .ref.linear import linear as _ref_linear

BLOCK = 128  # the weight's scale block, and the activation quantisation block
LIBRARY_MIN_M = 1024  # from here on (bf16 activations) dequantise once + a library GEMM


@triton.jit
def _fp8_gemm_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, tiles_per_split,
                     stride_xm, stride_xg, stride_xk, stride_wn, stride_wk, stride_sn, stride_sk,
                     stride_os, stride_om, stride_og, stride_on,
                     SPLIT_K: tl.constexpr, ACT_FP8: tl.constexpr, SCALE_E8M0: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n, pid_z = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    group, split = pid_z // SPLIT_K, pid_z % SPLIT_K
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = offs_m < M, offs_n < N
    w_rows = group * N + offs_n  # this group's weight rows
    x_base = x_ptr + group * stride_xg + offs_m[:, None] * stride_xm
    w_base = w_ptr + w_rows[None, :] * stride_wn
    s_base = s_ptr + (w_rows // 128) * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(K, BLOCK_K))
    for kt in range(first, last):
        offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_base + offs_k[None, :] * stride_xk, mask=m_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)  # [BM, BK]
        w = tl.load(w_base + offs_k[:, None] * stride_wk, mask=k_mask[:, None] & n_mask[None, :], other=0.0)  # [BK, BN]
        ws = tl.load(s_base + (kt * BLOCK_K // 128) * stride_sk, mask=n_mask, other=0)
        ws = e8m0_to_f32(ws) if SCALE_E8M0 else ws.to(tl.float32)  # [BN]
        if ACT_FP8:
            xs = pow2_ceil(tl.maximum(tl.max(tl.abs(x), axis=1), 1e-4) / 448.0)  # [BM]
            xq = cast(tl.clamp(x / xs[:, None], -448.0, 448.0), tl.float8e4nv)
            acc += tl.dot(xq, w) * (xs[:, None] * ws[None, :])
        else:
            acc += tl.dot(dot_operand(x), dot_operand(w)) * ws[None, :]
    out = out_ptr + split * stride_os + offs_m[:, None] * stride_om + group * stride_og + offs_n[None, :] * stride_on
    tl.store(out, cast(acc, out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _fp8_dequant_kernel(w_ptr, s_ptr, out_ptr, N, K, stride_sn, SCALE_E8M0: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + (offs_n // 128)[:, None] * stride_sn + (offs_k // 128)[None, :], mask=mask, other=0)
    s = e8m0_to_f32(s) if SCALE_E8M0 else s.to(tl.float32)
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], cast(w * s, out_ptr.dtype.element_ty), mask=mask)


def _scale_arg(scale: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if scale.dtype in (torch.float8_e8m0fnu, torch.uint8):
        return as_bytes(scale), True
    return scale.float(), False


def _sm_count(device: torch.device) -> int:
    return 1 if INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count


def _config(m: int, n: int, k: int, groups: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, split_k) for an `m x n x k` problem with `groups` groups."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    block_n = 64 if m <= 64 else 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n) * groups
    split = max(1, min(triton.cdiv(k, BLOCK), 2 * _sm_count(device) // tiles))
    return block_m, block_n, 4 if block_m <= 64 else 8, split


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`[N, K]` e4m3 with `[ceil(N/128), ceil(K/128)]` scales -> `dtype` in one kernel."""
    check_device(weight, scale)
    n, k = weight.shape
    s, e8m0 = _scale_arg(scale)
    out = torch.empty(n, k, dtype=dtype, device=weight.device)
    _fp8_dequant_kernel[(triton.cdiv(n, 64), triton.cdiv(k, 128))](
        weight.contiguous(), s, out, n, k, s.stride(0), SCALE_E8M0=e8m0, BLOCK_N=64, BLOCK_K=128)
    return out


def fp8_gemm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, groups: int = 1, act_fp8: bool = False,
             out_dtype: torch.dtype | None = None, split_k: int | None = None) -> torch.Tensor:
    """`x [M, K]` (or `[M, G, K]` with `groups=G`) times e4m3 `weight [G*N, K]` -> `[M, N]` (`[M, G, N]`).

    `scale [ceil(G*N/128), ceil(K/128)]`; output in `out_dtype` (default x's); `split_k` forces
    the number of K splits (default: enough programs for the GPU)."""
    check_device(x, weight, scale)
    grouped = x.dim() == 3
    if grouped != (groups > 1) and not (grouped and x.shape[1] == groups):
        raise ValueError(f"x {tuple(x.shape)} does not match groups={groups}")
    xg = x if grouped else x.unsqueeze(1)  # [M, G, K]
    m, g, k = xg.shape
    rows, wk = weight.shape
    if wk != k or rows % g:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)} in {g} groups")
    if weight.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_gemm needs a float8_e4m3fn weight, got {weight.dtype}")
    n = rows // g
    out_dtype = out_dtype or x.dtype
    if not act_fp8 and g == 1 and m >= LIBRARY_MIN_M:
        return F.linear(xg[:, 0], dequantize_fp8(weight, scale, x.dtype)).to(out_dtype)
    s, e8m0 = _scale_arg(scale)
    block_m, block_n, warps, auto_split = _config(m, n, k, g, x.device)
    k_tiles = triton.cdiv(k, BLOCK)
    per_split = triton.cdiv(k_tiles, split_k or auto_split)
    splits = triton.cdiv(k_tiles, per_split)
    out = torch.empty(splits, m, g, n, dtype=torch.float32 if splits > 1 else out_dtype, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), g * splits)
    _fp8_gemm_kernel[grid](xg, weight, s, out, m, n, k, per_split,
                           xg.stride(0), xg.stride(1), xg.stride(2), weight.stride(0), weight.stride(1),
                           s.stride(0), s.stride(1), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
                           SPLIT_K=splits, ACT_FP8=act_fp8, SCALE_E8M0=e8m0,
                           BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK, num_warps=warps)
    out = out.sum(0).to(out_dtype) if splits > 1 else out[0]
    return out if grouped else out[:, 0]


def linear(x: torch.Tensor, weight: QuantizedWeight | torch.Tensor, act_fp8: bool = False) -> torch.Tensor:
    """`x [..., K]` times `weight [N, K]` as stored (a plain tensor: dense) -> `[..., N]`: FP8
    weights through `fp8_gemm`; dense and FP4 ones through `kernels.linear` (dense is a cuBLAS
    GEMM there)."""
    if isinstance(weight, torch.Tensor) or weight.fmt != "fp8":
        return _ref_linear(x, weight, act_fp8=act_fp8)
    flat = x.reshape(-1, x.shape[-1])
    return fp8_gemm(flat, weight.data, weight.scale, act_fp8=act_fp8).view(*x.shape[:-1], weight.shape[0])


def grouped_linear(x: torch.Tensor, weight: QuantizedWeight | torch.Tensor, act_fp8: bool = False) -> torch.Tensor:
    """`x [T, G, D]` times `weight [G*R, D]` per group -> `[T, G, R]` (V4's `wo_a`)."""
    if isinstance(weight, torch.Tensor) or weight.fmt != "fp8":
        return _ref_grouped(x, weight, act_fp8=act_fp8)
    return fp8_gemm(x, weight.data, weight.scale, groups=x.shape[1], act_fp8=act_fp8)
