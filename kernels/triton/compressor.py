"""The compressor's window close in one program per entry: per-channel softmax pooling of
the window's slots, RMS norm, RoPE at the entry position, the FP8 QDQ and the paged insert.

Entries whose slot is -1 (padding of a fixed-size launch) write nothing, so a CUDA graph can
launch one program per possible entry. The slot softmax is online over blocks of slots, so
a 128-slot HCA window never sits in registers whole.
"""

from __future__ import annotations

import torch

from ._compat import check_device, pow2, rope_arg, rotate_tail, triton, tl
from .kv_write import pool_args, write_row
from .ref.attention import compressor_rows  # noqa: F401  (two GEMMs through the dispatch)
from ..kv_formats import Pool


@triton.jit
def _compress_kernel(kv_ptr, score_ptr, w_ptr, rope_ptr, slots_ptr, pool_ptr, pool16_ptr, S, D, eps,
                     stride_ke, stride_ks, stride_se, stride_ss, stride_rt, stride_row, page_rows, page_bytes,
                     ROPE_PAIRS: tl.constexpr, FP8: tl.constexpr, QDQ: tl.constexpr, NOPE: tl.constexpr,
                     DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr, KEYS: tl.constexpr,
                     BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    e = tl.program_id(0)
    slot = tl.load(slots_ptr + e)
    if slot < 0:
        return
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    m = tl.full((BLOCK_D,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < S)[:, None] & d_mask[None, :]
        score = tl.load(score_ptr + e * stride_se + offs_s[:, None] * stride_ss + offs_d[None, :], mask=mask,
                        other=float("-inf")).to(tl.float32)  # [BS, BD]
        kv = tl.load(kv_ptr + e * stride_ke + offs_s[:, None] * stride_ks + offs_d[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        m_new = tl.maximum(m, tl.max(score, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a channel with no slot yet
        p = tl.exp(score - m_safe[None, :])
        alpha = tl.exp(m - m_safe)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p * kv, axis=0)
        m = m_new
    pooled = acc / l  # [BD]
    x = pooled * tl.rsqrt(tl.sum(tl.where(d_mask, pooled * pooled, 0.0), axis=0) / D + eps)
    x = (x * tl.load(w_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32))[None, :]  # [1, BD]
    row = rotate_tail(tl.where(d_mask[None, :], x, 0.0), rope_ptr + e * stride_rt, D, ROPE_PAIRS)
    write_row(row, slot, pool_ptr, pool16_ptr, D, stride_row, page_rows, page_bytes, FP8, QDQ, NOPE, DATA_BYTES,
              SCALE_BYTES, KEYS)


def compress_close(kv: torch.Tensor, score: torch.Tensor, weight: torch.Tensor, eps: float, rope: torch.Tensor,
                   pool: Pool, slots: torch.Tensor, qdq: bool = False) -> None:
    """`kv, score [E, S, d]` (any strides), `rope [E, rd/2]`, `slots [E]`, a KV pool or FP8 indexer keys;
    see `ref.attention.compress_close`."""
    e, s, d = kv.shape
    if score.shape != kv.shape:
        raise ValueError(f"score {tuple(score.shape)} and kv {tuple(kv.shape)} differ")
    if kv.stride(2) != 1 or score.stride(2) != 1:
        raise ValueError("compress_close needs unit stride along the channel dim")
    check_device(kv, score, slots)
    table = rope_arg(rope)
    (pool_ptr, pool16, stride_row, page_rows, page_bytes), consts = pool_args(pool, d, 2 * rope.shape[-1], qdq)
    _compress_kernel[(e,)](kv, score, weight, table, slots, pool_ptr, pool16, s, d, float(eps),
                           kv.stride(0), kv.stride(1), score.stride(0), score.stride(1), table.stride(0),
                           stride_row, page_rows, page_bytes, ROPE_PAIRS=rope.shape[-1],
                           BLOCK_S=min(16, pow2(s)), BLOCK_D=pow2(d), **consts)
