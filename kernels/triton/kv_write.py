"""Writing one finished KV row into a pool: float rows as they are (optionally through the
official FP8 QDQ of the no-RoPE dims), FP8 rows in the 584-byte MODEL1 layout
(`kernels.kv_formats.FP8KVCache`), or FP8 indexer keys (`FP8IndexerKeys`: e4m3 and one fp32
power-of-two scale per key). Shared by the kv prologue and the compressor's window close."""

from __future__ import annotations

import torch

from ._compat import cast, pow2_ceil, tl, triton
from ..kv_formats import KV_QUANT_BLOCK, FP8IndexerKeys, FP8KVCache, Pool

_QB = tl.constexpr(KV_QUANT_BLOCK)


@triton.jit
def _qdq_blocks(x, NOPE: tl.constexpr):
    """Power-of-two e4m3 quantisation of bf16-rounded `x [1, BD]` in blocks of 64 columns, the
    columns from NOPE on left out of every block's amax (a block may end in RoPE dims):
    (e4m3 values `[1, BD]`, fp32 scales per column `[1, BD]`)."""
    x = tl.where(tl.arange(0, x.shape[1])[None, :] < NOPE, x, 0.0)
    blocks = tl.reshape(cast(x, tl.bfloat16).to(tl.float32), (x.shape[1] // _QB, _QB))
    scale = pow2_ceil(tl.maximum(tl.max(tl.abs(blocks), axis=1), 1e-4) / 448.0)  # [BD/64]
    q = cast(tl.clamp(blocks / scale[:, None], -448.0, 448.0), tl.float8e4nv)
    scale = tl.reshape(tl.broadcast_to(scale[:, None], (x.shape[1] // _QB, _QB)), (1, x.shape[1]))
    return tl.reshape(q, (1, x.shape[1])), scale


@triton.jit
def write_row(row, slot, pool_ptr, pool16_ptr, D, stride_row, page_rows, page_bytes,
              FP8: tl.constexpr, QDQ: tl.constexpr, NOPE: tl.constexpr, DATA_BYTES: tl.constexpr,
              SCALE_BYTES: tl.constexpr, KEYS: tl.constexpr):
    """Store fp32 `row [1, BD]` as pool row `slot` (>= 0). KEYS: an `FP8IndexerKeys` row, with
    `pool16_ptr` the pool's fp32 view."""
    offs_d = tl.arange(0, row.shape[1])[None, :]
    d_mask = offs_d < D
    nope = offs_d < NOPE
    if KEYS:
        amax = tl.max(tl.max(tl.abs(tl.where(d_mask, row, 0.0)), axis=1), axis=0)
        scale = pow2_ceil(tl.maximum(amax, 1e-4) / 448.0)
        q = cast(tl.clamp(row / scale, -448.0, 448.0), tl.float8e4nv)
        base = (slot // page_rows) * page_bytes
        tl.store(pool_ptr + base + (slot % page_rows) * DATA_BYTES + offs_d, q.to(tl.uint8, bitcast=True),
                 mask=d_mask)
        tl.store(pool16_ptr + (base + page_rows * DATA_BYTES + (slot % page_rows) * 4) // 4, scale)
    elif FP8:
        q, scale = _qdq_blocks(row, NOPE)
        data = (slot // page_rows) * page_bytes + (slot % page_rows) * DATA_BYTES
        scale_at = (slot // page_rows) * page_bytes + page_rows * DATA_BYTES + (slot % page_rows) * SCALE_BYTES
        tl.store(pool_ptr + data + offs_d, q.to(tl.uint8, bitcast=True), mask=nope)
        tl.store(pool16_ptr + (data + NOPE + 2 * (offs_d - NOPE)) // 2, cast(row, tl.bfloat16), mask=~nope & d_mask)
        exponent = ((scale.to(tl.int32, bitcast=True) >> 23) & 0xFF).to(tl.uint8)  # E8M0 of a power of two
        at = offs_d // _QB
        first_of_block = (offs_d % _QB == 0) & nope
        tl.store(pool_ptr + scale_at + at, exponent, mask=first_of_block)
        tl.store(pool_ptr + scale_at + SCALE_BYTES - 1 + 0 * offs_d, tl.zeros_like(exponent), mask=offs_d == 0)  # pad
    else:
        if QDQ:
            q, scale = _qdq_blocks(row, NOPE)
            row = tl.where(nope, q.to(tl.float32) * scale, cast(row, tl.bfloat16).to(tl.float32))
        tl.store(pool_ptr + slot * stride_row + offs_d, cast(row, pool_ptr.dtype.element_ty), mask=d_mask)


def pool_args(pool: Pool, dim: int, rope_dim: int, qdq: bool) -> tuple[tuple, dict]:
    """(pointer arguments, constexprs) that `write_row` takes for `pool`."""
    if isinstance(pool, FP8IndexerKeys):
        if pool.dim != dim:
            raise ValueError(f"FP8 indexer keys are {pool.dim} dims, the rows written {dim}")
        return ((pool.data, pool.data.view(torch.float32), 0, pool.block_rows, pool.data.shape[1]),
                dict(FP8=True, QDQ=True, NOPE=dim, DATA_BYTES=dim, SCALE_BYTES=4, KEYS=True))
    if isinstance(pool, FP8KVCache):
        fmt = pool.fmt
        if (fmt.dim, fmt.rope_dim) != (dim, rope_dim):
            raise ValueError(f"FP8 pool rows are {fmt.dim} dims with {fmt.rope_dim} RoPE dims, the rows written "
                             f"{dim} with {rope_dim}")
        return ((pool.data, pool.data.view(torch.bfloat16), 0, pool.page_rows, pool.data.shape[1]),
                dict(FP8=True, QDQ=True, NOPE=fmt.nope, DATA_BYTES=fmt.data_bytes, SCALE_BYTES=fmt.scale_bytes,
                     KEYS=False))
    if pool.shape[-1] != dim:
        raise ValueError(f"pool rows have {pool.shape[-1]} dims, the rows written have {dim}")
    if qdq and (dim - rope_dim) % KV_QUANT_BLOCK:
        raise ValueError(f"the FP8 QDQ needs the {dim - rope_dim} no-RoPE dims in blocks of {KV_QUANT_BLOCK}")
    return (pool, pool, pool.stride(0), 1, 0), dict(FP8=False, QDQ=qdq, NOPE=dim - rope_dim, DATA_BYTES=0,
                                                    SCALE_BYTES=0, KEYS=False)
