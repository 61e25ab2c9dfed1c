"""Sparse shared-KV attention with per-head sinks over row lists (FlashMLA's contract), for
decode and prefill alike, over float or FP8 (MODEL1, 584 B/row) pools.

Query row t attends to the rows `index.indices[t, :lengths[t]]` (index -1 = none) of `kv`
and, with an extra pool (CSA top-k or HCA entries), to `extra_index`'s rows of `extra`:

    o[t, h] = sum_j e^{s_j - M} k_j / (sum_j e^{s_j - M} + e^{sink_h - M}),  s_j = scale * q[t, h] . k_j

with V = K. A program takes one query row and BLOCK_H heads (MQA: all heads share the
rows, so the heads form the MMA's M), loads each block of rows once for both products, and
keeps an online softmax started at `m = sink, l = 1`, so an empty row list yields 0 and
never NaN. For decode, `splits` programs per row share the lists; their partial (acc, m,
l) are merged by a second kernel, which applies the sink once. The epilogue optionally
rotates the output's trailing dims by `inv_rope` (the inverse RoPE table) before the store.
"""

from __future__ import annotations

import torch

from ..sparse_attention import KVIndex
from ._compat import INTERPRET, cast, check_device, dot_operand, e8m0_to_f32, pow2, rope_arg, rotate_tail, triton, tl
from ..kv_formats import KV_QUANT_BLOCK, FP8KVCache, KVPool

LOG2E = 1.4426950408889634  # scores and the sink run in base 2
_LOG2E = tl.constexpr(LOG2E)
_EMPTY = tl.constexpr(-1.0e30)  # the running max of a split that starts without the sink: finite, so no NaN
_QB = tl.constexpr(KV_QUANT_BLOCK)


@triton.jit
def _load_rows(pool_ptr, pool16_ptr, rows, valid, offs_d, D, stride_row, page_rows, page_bytes,
               FP8: tl.constexpr, NOPE: tl.constexpr, DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr):
    """fp32 rows `[BN, BLOCK_D]` of a pool (zeros where not valid)."""
    d_mask = offs_d < D
    if FP8:
        page, slot = rows // page_rows, rows % page_rows
        data = page * page_bytes + slot * DATA_BYTES  # byte offset of each row's data
        scale_at = page * page_bytes + page_rows * DATA_BYTES + slot * SCALE_BYTES
        nope = offs_d < NOPE
        m = valid[:, None] & nope[None, :]
        q = tl.load(pool_ptr + data[:, None] + offs_d[None, :], mask=m, other=0)
        s = tl.load(pool_ptr + scale_at[:, None] + (offs_d // _QB)[None, :], mask=m, other=127)
        q = q.to(tl.float8e4nv, bitcast=True).to(tl.float32) * e8m0_to_f32(s)
        rope_at = (data[:, None] + NOPE + 2 * (offs_d[None, :] - NOPE)) // 2  # in bf16 elements
        rope = tl.load(pool16_ptr + rope_at, mask=valid[:, None] & (~nope & d_mask)[None, :], other=0.0)
        return tl.where(nope[None, :], q, rope.to(tl.float32))
    return tl.load(pool_ptr + rows[:, None] * stride_row + offs_d[None, :],
                   mask=valid[:, None] & d_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _attend(q, m, l, acc, pool_ptr, pool16_ptr, idx_ptr, length, first, last, offs_d, D, stride_row,
            page_rows, page_bytes, scale_log2,
            FP8: tl.constexpr, NOPE: tl.constexpr, DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr,
            BLOCK_N: tl.constexpr):
    """Online softmax (base 2) of `q [BH, BD]` over list positions `[first, min(last, length))`."""
    for n0 in range(first, tl.minimum(last, length), BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_list = offs_n < tl.minimum(last, length)
        rows = tl.load(idx_ptr + offs_n, mask=in_list, other=-1)
        valid = rows >= 0
        k = _load_rows(pool_ptr, pool16_ptr, tl.where(valid, rows, 0), valid, offs_d, D, stride_row,
                       page_rows, page_bytes, FP8, NOPE, DATA_BYTES, SCALE_BYTES)  # [BN, BD]
        s = tl.dot(dot_operand(q), dot_operand(tl.trans(k))) * scale_log2  # [BH, BN]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(dot_operand(p), dot_operand(k))
        m = m_new
    return m, l, acc


@triton.jit
def _finish(out, t, offs_h, h_mask, offs_d, D, rope_ptr, stride_rt, out_ptr, stride_ot, stride_oh,
            INV_ROPE: tl.constexpr, ROPE_PAIRS: tl.constexpr):
    """Rotate the trailing `2 * ROPE_PAIRS` dims by the table row t (if asked), then store."""
    if INV_ROPE:
        out = rotate_tail(out, rope_ptr + t * stride_rt, D, ROPE_PAIRS)
    tl.store(out_ptr + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :],
             cast(out, out_ptr.dtype.element_ty), mask=h_mask[:, None] & (offs_d < D)[None, :])


@triton.jit
def _sparse_attn_kernel(q_ptr, kv_ptr, kv16_ptr, idx_ptr, len_ptr, x_ptr, x16_ptr, xidx_ptr, xlen_ptr,
                        sink_ptr, rope_ptr, out_ptr, part_ptr, stats_ptr,
                        H, D, K, KX, scale_log2, chunk, xchunk,
                        stride_qt, stride_qh, stride_it, stride_xit, stride_kv, stride_xkv, stride_rt,
                        stride_ot, stride_oh, page_rows, page_bytes, xpage_rows, xpage_bytes,
                        SPLITS: tl.constexpr, HAS_EXTRA: tl.constexpr,
                        FP8: tl.constexpr, XFP8: tl.constexpr, INV_ROPE: tl.constexpr, ROPE_PAIRS: tl.constexpr,
                        NOPE: tl.constexpr, DATA_BYTES: tl.constexpr, SCALE_BYTES: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    t, hb, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = offs_h < H
    q = tl.load(q_ptr + t * stride_qt + offs_h[:, None] * stride_qh + offs_d[None, :],
                mask=h_mask[:, None] & (offs_d < D)[None, :], other=0.0).to(tl.float32)  # [BH, BD]
    sink = tl.load(sink_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32) * _LOG2E
    m = tl.where(split == 0, sink, _EMPTY)  # the sink counts once, in split 0
    l = tl.where(split == 0, 1.0, 0.0) + tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    length = tl.minimum(tl.load(len_ptr + t), K)
    m, l, acc = _attend(q, m, l, acc, kv_ptr, kv16_ptr, idx_ptr + t * stride_it, length, split * chunk,
                        (split + 1) * chunk, offs_d, D, stride_kv, page_rows, page_bytes, scale_log2,
                        FP8, NOPE, DATA_BYTES, SCALE_BYTES, BLOCK_N)
    if HAS_EXTRA:
        xlength = tl.minimum(tl.load(xlen_ptr + t), KX)
        m, l, acc = _attend(q, m, l, acc, x_ptr, x16_ptr, xidx_ptr + t * stride_xit, xlength, split * xchunk,
                            (split + 1) * xchunk, offs_d, D, stride_xkv, xpage_rows, xpage_bytes, scale_log2,
                            XFP8, NOPE, DATA_BYTES, SCALE_BYTES, BLOCK_N)
    if SPLITS == 1:
        _finish(acc / l[:, None], t, offs_h, h_mask, offs_d, D, rope_ptr, stride_rt, out_ptr, stride_ot,
                stride_oh, INV_ROPE, ROPE_PAIRS)
    else:  # partials: acc [T, S, H, BD], (m, l) [T, S, 2, H]
        row = (t * SPLITS + split) * H + offs_h
        tl.store(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :], acc, mask=h_mask[:, None])
        stats = stats_ptr + (t * SPLITS + split) * 2 * H + offs_h
        tl.store(stats, m, mask=h_mask)
        tl.store(stats + H, l, mask=h_mask)


@triton.jit
def _merge_kernel(part_ptr, stats_ptr, rope_ptr, out_ptr, H, D, stride_rt, stride_ot, stride_oh,
                  SPLITS: tl.constexpr, INV_ROPE: tl.constexpr, ROPE_PAIRS: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t, hb = tl.program_id(0), tl.program_id(1)
    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = offs_h < H
    m = tl.full((BLOCK_H,), _EMPTY, dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        m = tl.maximum(m, tl.load(stats_ptr + (t * SPLITS + s) * 2 * H + offs_h, mask=h_mask, other=_EMPTY))
    l = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        stats = stats_ptr + (t * SPLITS + s) * 2 * H + offs_h
        w = tl.exp2(tl.load(stats, mask=h_mask, other=_EMPTY) - m)
        l += w * tl.load(stats + H, mask=h_mask, other=1.0)
        row = (t * SPLITS + s) * H + offs_h
        acc += w[:, None] * tl.load(part_ptr + row[:, None] * BLOCK_D + offs_d[None, :], mask=h_mask[:, None],
                                    other=0.0)
    _finish(acc / l[:, None], t, offs_h, h_mask, offs_d, D, rope_ptr, stride_rt, out_ptr, stride_ot, stride_oh,
            INV_ROPE, ROPE_PAIRS)


def _pool_args(pool: KVPool) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    """(pointer, bf16 view, row stride, page rows, page bytes) of a float or FP8 pool."""
    if isinstance(pool, FP8KVCache):
        return pool.data, pool.data.view(torch.bfloat16), 0, pool.page_rows, pool.data.shape[1]
    return pool, pool, pool.stride(0), 1, 0


def _splits(t: int, head_blocks: int, width: int, block_n: int, device: torch.device) -> int:
    """Programs per query row: enough to fill the GPU at decode, 1 under the interpreter."""
    if INTERPRET:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(width, 4 * block_n), triton.cdiv(2 * sms, t * head_blocks), 16))


def sparse_attention(q: torch.Tensor, kv: KVPool, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: KVPool | None = None, extra_index: KVIndex | None = None,
                     inv_rope: torch.Tensor | None = None, splits: int | None = None) -> torch.Tensor:
    """See the module docstring; shapes as `kernels.sparse_attention.sparse_attention`, pools float
    `[S, D]` or `FP8KVCache`; `inv_rope` is the inverse rotation table `[T, rd/2]` (complex)."""
    t, h, d = q.shape
    has_extra = extra_index is not None
    pools = [kv] + ([extra] if has_extra else [])
    fmt = next((p.fmt for p in pools if isinstance(p, FP8KVCache)), None)
    if fmt is not None and fmt.dim != d:
        raise ValueError(f"FP8 pool rows have {fmt.dim} dims, q has {d}")
    for p in pools:
        if not isinstance(p, FP8KVCache) and p.shape[-1] != d:
            raise ValueError(f"pool rows have {p.shape[-1]} dims, q has {d}")
    check_device(q, index.indices, sink)
    q = q.contiguous()
    block_h = 16 if d >= 256 else min(64, max(16, pow2(h)))
    block_n, block_d = (32 if d >= 256 else 64), pow2(d)
    head_blocks = triton.cdiv(h, block_h)
    width = index.width + (extra_index.width if has_extra else 0)
    n_split = splits or _splits(t, head_blocks, width, block_n, q.device)
    chunk = triton.cdiv(triton.cdiv(index.width, n_split), block_n) * block_n
    xchunk = triton.cdiv(triton.cdiv(extra_index.width, n_split), block_n) * block_n if has_extra else 0
    kv_ptr, kv16, stride_kv, page_rows, page_bytes = _pool_args(kv)
    x_ptr, x16, stride_xkv, xpage_rows, xpage_bytes = _pool_args(extra) if has_extra else (kv_ptr, kv16, 0, 1, 0)
    xidx = extra_index.indices if has_extra else index.indices
    xlen = extra_index.lengths if has_extra else index.lengths
    rope = rope_arg(inv_rope) if inv_rope is not None else q
    out = torch.empty_like(q)
    part = torch.empty(t, n_split, h, block_d, dtype=torch.float32, device=q.device) if n_split > 1 else out
    stats = torch.empty(t, n_split, 2, h, dtype=torch.float32, device=q.device) if n_split > 1 else out
    consts = dict(NOPE=fmt.nope if fmt else d, DATA_BYTES=fmt.data_bytes if fmt else 0,
                  SCALE_BYTES=fmt.scale_bytes if fmt else 0)
    rope_pairs = inv_rope.shape[-1] if inv_rope is not None else 0
    _sparse_attn_kernel[(t, head_blocks, n_split)](
        q, kv_ptr, kv16, index.indices, index.lengths, x_ptr, x16, xidx, xlen, sink, rope, out, part, stats,
        h, d, index.width, extra_index.width if has_extra else 0, scale * LOG2E, chunk, xchunk,
        q.stride(0), q.stride(1), index.indices.stride(0), xidx.stride(0), stride_kv, stride_xkv,
        rope.stride(0), out.stride(0), out.stride(1), page_rows, page_bytes, xpage_rows, xpage_bytes,
        SPLITS=n_split, HAS_EXTRA=has_extra, FP8=isinstance(kv, FP8KVCache),
        XFP8=isinstance(extra, FP8KVCache), INV_ROPE=inv_rope is not None, ROPE_PAIRS=rope_pairs,
        BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=8 if block_d >= 512 else 4, **consts)
    if n_split > 1:
        _merge_kernel[(t, head_blocks)](part, stats, rope, out, h, d, rope.stride(0), out.stride(0), out.stride(1),
                                        SPLITS=n_split, INV_ROPE=inv_rope is not None, ROPE_PAIRS=rope_pairs,
                                        BLOCK_H=block_h, BLOCK_D=block_d)
    return out
