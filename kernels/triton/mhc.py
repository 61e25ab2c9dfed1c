"""Fused mHC: `hc_pre` and `hc_head` in two kernels each, `hc_post` in one.

1. `_mix_kernel`: the `[T, n*D] x [n*D, M]` projection onto `fn`'s M = (2+n)*n rows (n for
   the head) plus the squared sum for the RMS, split along K into partial sums so a decode
   batch still spreads over the GPU; fp32 with IEEE products (these coefficients are
   compared against the fp32 oracle at 1e-5).
2. `_collapse_kernel`, one program per token: the partials' sum, the RMS scale, sigmoid
   gates, the n x n row softmax and the Sinkhorn normalisations in registers, then the
   collapse `sum_i pre_i X_i`.

`hc_post` is one pass over the streams: `Y[k] = post[k] * f + sum_j comb[j, k] X[j]`.
"""

from __future__ import annotations

import torch

from ._compat import INTERPRET, cast, check_device, pow2, triton, tl


@triton.jit
def _mix_kernel(x_ptr, fn_ptr, mix_ptr, sq_ptr, T, M, K, k_per_split, stride_xt, stride_fm,
                BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_t, split = tl.program_id(0), tl.program_id(1)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_m = tl.arange(0, BLOCK_M)
    t_mask = offs_t < T
    acc = tl.zeros((BLOCK_T, BLOCK_M), dtype=tl.float32)
    sq = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for k0 in range(split * k_per_split, tl.minimum((split + 1) * k_per_split, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        x = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_k[None, :], mask=t_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)  # [BT, BK]
        fn = tl.load(fn_ptr + offs_m[:, None] * stride_fm + offs_k[None, :],
                     mask=(offs_m < M)[:, None] & k_mask[None, :], other=0.0)  # [BM, BK]
        acc = tl.dot(x, tl.trans(fn), acc, input_precision="ieee")
        sq += tl.sum(x * x, axis=1)
    out = (split * T + offs_t) * BLOCK_M
    tl.store(mix_ptr + out[:, None] + offs_m[None, :], acc, mask=t_mask[:, None])
    tl.store(sq_ptr + split * T + offs_t, sq, mask=t_mask)


@triton.jit
def _mix_part(mix_ptr, t, T, offs, mask, inv_rms, SPLITS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Columns `offs` of token t's projection, summed over the splits and RMS-scaled."""
    total = tl.zeros(offs.shape, dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        total += tl.load(mix_ptr + (s * T + t) * BLOCK_M + offs, mask=mask, other=0.0)
    return total * inv_rms


@triton.jit
def _collapse_kernel(mix_ptr, sq_ptr, scale_ptr, base_ptr, x_ptr, out_ptr, post_ptr, comb_ptr,
                     T, D, norm_eps, eps, iters, stride_xt, stride_xn, stride_ot,
                     N: tl.constexpr, SPLITS: tl.constexpr, HEAD: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    sq = tl.load(sq_ptr + t)
    for s in tl.static_range(1, SPLITS):
        sq += tl.load(sq_ptr + s * T + t)
    inv_rms = tl.rsqrt(sq / (N * D) + norm_eps)
    offs_n = tl.arange(0, N)
    always = offs_n < N
    pre = _mix_part(mix_ptr, t, T, offs_n, always, inv_rms, SPLITS, BLOCK_M)
    pre = tl.sigmoid(pre * tl.load(scale_ptr) + tl.load(base_ptr + offs_n)) + eps
    if not HEAD:
        post = _mix_part(mix_ptr, t, T, N + offs_n, always, inv_rms, SPLITS, BLOCK_M)
        post = 2.0 * tl.sigmoid(post * tl.load(scale_ptr + 1) + tl.load(base_ptr + N + offs_n))
        cell = 2 * N + offs_n[:, None] * N + offs_n[None, :]  # comb[j, k] = mix[2n + n*j + k]
        comb = _mix_part(mix_ptr, t, T, cell, always[:, None] & always[None, :], inv_rms, SPLITS, BLOCK_M)
        comb = comb * tl.load(scale_ptr + 2) + tl.load(base_ptr + cell)
        comb = tl.exp(comb - tl.max(comb, axis=1)[:, None])
        comb = comb / tl.sum(comb, axis=1)[:, None] + eps  # row softmax
        comb = comb / (tl.sum(comb, axis=0)[None, :] + eps)
        for _ in range(iters - 1):
            comb = comb / (tl.sum(comb, axis=1)[:, None] + eps)
            comb = comb / (tl.sum(comb, axis=0)[None, :] + eps)
        tl.store(post_ptr + t * N + offs_n, post)
        tl.store(comb_ptr + t * N * N + offs_n[:, None] * N + offs_n[None, :], comb)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        x = tl.load(x_ptr + t * stride_xt + offs_n[:, None] * stride_xn + offs_d[None, :],
                    mask=d_mask[None, :], other=0.0).to(tl.float32)  # [N, BD]
        tl.store(out_ptr + t * stride_ot + offs_d, cast(tl.sum(pre[:, None] * x, axis=0), out_ptr.dtype.element_ty),
                 mask=d_mask)


@triton.jit
def _post_kernel(f_ptr, x_ptr, post_ptr, comb_ptr, y_ptr, D, stride_ft, stride_xt, stride_xn,
                 N: tl.constexpr, BLOCK_D: tl.constexpr):
    t, db = tl.program_id(0), tl.program_id(1)
    offs_n = tl.arange(0, N)
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    f = tl.load(f_ptr + t * stride_ft + offs_d, mask=d_mask, other=0.0).to(tl.float32)  # [BD]
    x = tl.load(x_ptr + t * stride_xt + offs_n[:, None] * stride_xn + offs_d[None, :],
                mask=d_mask[None, :], other=0.0).to(tl.float32)  # [N(j), BD]
    post = tl.load(post_ptr + t * N + offs_n).to(tl.float32)
    comb = tl.load(comb_ptr + t * N * N + offs_n[:, None] * N + offs_n[None, :]).to(tl.float32)  # [N(j), N(k)]
    y = post[:, None] * f[None, :] + tl.sum(comb[:, :, None] * x[:, None, :], axis=0)  # [N(k), BD]
    tl.store(y_ptr + t * stride_xt + offs_n[:, None] * stride_xn + offs_d[None, :],
             cast(y, y_ptr.dtype.element_ty), mask=d_mask[None, :])


def _splits(t: int, block_t: int, k: int, block_k: int, device: torch.device) -> int:
    if INTERPRET:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(k, 4 * block_k), triton.cdiv(sms, triton.cdiv(t, block_t))))


def _collapse(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
              eps: float, iters: int, head: bool, splits: int | None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t, n, d = streams.shape
    if n & (n - 1):
        raise ValueError(f"the fused mHC needs a power-of-two number of streams, got {n}")
    check_device(streams, fn)
    streams = streams.contiguous()
    m, k = fn.shape
    block_t, block_m, block_k = 16, max(16, pow2(m)), 128
    n_split = splits or _splits(t, block_t, k, block_k, streams.device)
    per_split = triton.cdiv(triton.cdiv(k, n_split), block_k) * block_k
    n_split = triton.cdiv(k, per_split)
    mix = torch.empty(n_split, t, block_m, dtype=torch.float32, device=streams.device)
    sq = torch.empty(n_split, t, dtype=torch.float32, device=streams.device)
    fn = fn.float().contiguous()
    _mix_kernel[(triton.cdiv(t, block_t), n_split)](streams, fn, mix, sq, t, m, k, per_split, streams.stride(0),
                                                   fn.stride(0), BLOCK_T=block_t, BLOCK_M=block_m, BLOCK_K=block_k)
    out = torch.empty(t, d, dtype=streams.dtype, device=streams.device)
    post = mix if head else torch.empty(t, n, dtype=torch.float32, device=streams.device)  # the head writes neither
    comb = mix if head else torch.empty(t, n, n, dtype=torch.float32, device=streams.device)
    _collapse_kernel[(t,)](mix, sq, scale.float().contiguous(), base.float().contiguous(), streams, out, post, comb,
                           t, d, float(norm_eps), float(eps), int(iters), streams.stride(0), streams.stride(1),
                           out.stride(0), N=n, SPLITS=n_split, HEAD=head, BLOCK_M=block_m,
                           BLOCK_D=min(1024, pow2(d)))
    return out, post, comb


def hc_pre(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
           eps: float, sinkhorn_iters: int, splits: int | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`kernels.mhc.hc_pre`: `(collapsed [T, D], post [T, n], comb [T, n, n])`."""
    return _collapse(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters, False, splits)


def hc_head(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
            eps: float, splits: int | None = None) -> torch.Tensor:
    """`kernels.mhc.hc_head`: the last collapse `[T, n, D] -> [T, D]`."""
    return _collapse(streams, fn, scale, base, norm_eps, eps, 1, True, splits)[0]


def hc_post(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """`kernels.mhc.hc_post`: `Y[t, k] = post[t, k] * out[t] + sum_j comb[t, j, k] * X[t, j]`."""
    t, n, d = streams.shape
    check_device(block_out, streams, post, comb)
    streams = streams.contiguous()
    y = torch.empty_like(streams)
    block_d = min(1024, pow2(d))
    _post_kernel[(t, triton.cdiv(d, block_d))](block_out, streams, post.float().contiguous(),
                                               comb.float().contiguous(), y, d, block_out.stride(0),
                                               streams.stride(0), streams.stride(1), N=n, BLOCK_D=block_d)
    return y
