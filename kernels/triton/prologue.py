"""The attention prologue: RMS norm + RoPE of q heads (and any `[T, H, D]` rows), and the kv
path's norm + RoPE + FP8 QDQ + paged insert in one pass per token (slot -1 = padding:
nothing is written).

RoPE rotates the trailing `rd` dims in interleaved pairs by the complex table row of the
token (`kernels.rope.rope_table`); pairs before them pass with cos 1, sin 0.
"""

from __future__ import annotations

import torch

from ._compat import cast, check_device, pow2, rope_arg, rotate_tail, triton, tl
from .kv_write import pool_args, write_row
from ..kv_formats import KVPool


@triton.jit
def _norm_rope(x, w_ptr, rope_ptr, t, offs_d, D, eps, stride_rt,
               HAS_WEIGHT: tl.constexpr, ROPE_PAIRS: tl.constexpr, DTYPE: tl.constexpr):
    """RMS-normalise rows `x [R, BD]` (fp32; columns >= D are 0), scale by the weight, round to
    the input's DTYPE as the reference norm does, rotate (fp32 out)."""
    d_mask = offs_d < D
    x = x * tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]
    if HAS_WEIGHT:
        x = x * tl.load(w_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    x = cast(x, DTYPE).to(tl.float32)
    if ROPE_PAIRS > 0:
        x = rotate_tail(x, rope_ptr + t * stride_rt, D, ROPE_PAIRS)
    return x


@triton.jit
def _norm_rope_kernel(x_ptr, w_ptr, rope_ptr, out_ptr, H, D, eps, stride_xt, stride_xh, stride_rt,
                      stride_ot, stride_oh, HAS_WEIGHT: tl.constexpr, ROPE_PAIRS: tl.constexpr,
                      BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t, hb = tl.program_id(0), tl.program_id(1)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < H)[:, None] & (offs_d < D)[None, :]
    x = tl.load(x_ptr + t * stride_xt + offs_h[:, None] * stride_xh + offs_d[None, :], mask=mask,
                other=0.0).to(tl.float32)  # [BH, BD]
    y = _norm_rope(x, w_ptr, rope_ptr, t, offs_d, D, eps, stride_rt, HAS_WEIGHT, ROPE_PAIRS,
                   x_ptr.dtype.element_ty)
    tl.store(out_ptr + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :],
             cast(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kv_insert_kernel(kv_ptr, w_ptr, rope_ptr, slots_ptr, pool_ptr, pool16_ptr, D, eps, stride_kt, stride_rt,
                      stride_row, page_rows, page_bytes, ROPE_PAIRS: tl.constexpr, FP8: tl.constexpr,
                      QDQ: tl.constexpr, NOPE: tl.constexpr, DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr,
                      KEYS: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t)
    if slot < 0:
        return
    offs_d = tl.arange(0, BLOCK_D)
    x = tl.load(kv_ptr + t * stride_kt + offs_d[None, :], mask=(offs_d < D)[None, :], other=0.0).to(tl.float32)
    row = _norm_rope(x, w_ptr, rope_ptr, t, offs_d, D, eps, stride_rt, True, ROPE_PAIRS,
                     kv_ptr.dtype.element_ty)  # [1, BD]
    write_row(row, slot, pool_ptr, pool16_ptr, D, stride_row, page_rows, page_bytes, FP8, QDQ, NOPE, DATA_BYTES,
              SCALE_BYTES, KEYS)


def norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float, rope: torch.Tensor | None) -> torch.Tensor:
    """RMS norm over the last dim of `x [T, H, D]` (weighted or not), then RoPE; see `ref.attention.norm_rope`."""
    t, h, d = x.shape
    check_device(x)
    out = torch.empty_like(x)
    table = rope_arg(rope) if rope is not None else x
    block_d = pow2(d)
    block_h = max(1, min(pow2(h), 8192 // block_d))
    _norm_rope_kernel[(t, triton.cdiv(h, block_h))](
        x, weight if weight is not None else x, table, out, h, d, float(eps), x.stride(0), x.stride(1),
        table.stride(0), out.stride(0), out.stride(1), HAS_WEIGHT=weight is not None,
        ROPE_PAIRS=rope.shape[-1] if rope is not None else 0, BLOCK_H=block_h, BLOCK_D=block_d)
    return out


def kv_insert(kv: torch.Tensor, weight: torch.Tensor, eps: float, rope: torch.Tensor, pool: KVPool,
              slots: torch.Tensor, qdq: bool = False) -> None:
    """`kv [T, D]` -> kv_norm -> RoPE -> (FP8 QDQ) -> `pool[slots]`; see `ref.attention.kv_insert`."""
    t, d = kv.shape
    check_device(kv, slots)
    table = rope_arg(rope)
    (pool_ptr, pool16, stride_row, page_rows, page_bytes), consts = pool_args(pool, d, 2 * rope.shape[-1], qdq)
    _kv_insert_kernel[(t,)](kv, weight, table, slots, pool_ptr, pool16, d, float(eps), kv.stride(0), table.stride(0),
                            stride_row, page_rows, page_bytes, ROPE_PAIRS=rope.shape[-1], BLOCK_D=pow2(d), **consts)
