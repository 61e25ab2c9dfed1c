"""Manifold-constrained hyper-connections (mHC): mixing V4's residual streams.

The residual is `[T, n, D]` (n = hc_mult streams). Before each block the streams are
collapsed with weights `pre`; after it the block output is spread back with `post` and
the old streams are mixed by `comb`, a doubly-stochastic n x n matrix from Sinkhorn.
All coefficient math runs in fp32.

Small batches are bound by the number of ops, large ones by how well each op vectorises,
so each step keeps the oracle's arithmetic in as few ops as that allows. A Sinkhorn
half-step is `x / (sum + eps)`: at a few tokens, one batched matmul against a ones vector
(sum plus eps) and one division over `[T, n, n]`; from `TOKENS_LAST_MIN` tokens on, the
same sums over a tokens-last `[n, n, T]` copy, where every reduction runs over an outer
dim on T-wide vectors (10x faster at 1K tokens). For n <= 4 (V4's hc_mult) both add the n
terms in order and then eps, so they agree to the bit. (Not taken: normalising in the log domain with one
`log_softmax` per half-step, half the ops, drops the eps, and that 1e-6 change in `comb`
flips a near-tie of the indexer's top-k in the token-by-token parity test; `torch.compile`
of the loop, 12-98 s to compile per process on 2 cores and no faster at one token.) On CPU
the whole loop is one call of a C helper (`kernels.native`) with the same arithmetic, bit for
bit; the torch loops remain for other devices and where no C compiler is found.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from . import composed, native
from .casts import cast, fp32


@lru_cache(maxsize=None)
def _which_scale(n: int, device: torch.device) -> torch.Tensor:
    """Which of the 3 scales scales each of the `(2 + n) * n` mixing coefficients."""
    return torch.tensor([0] * n + [1] * n + [2] * n * n, device=device)


def _mix(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """`base + scale * (fn . rms_norm(x))` for fp32 `x [T, n*D]`: `[T, fn rows]`. The RMS scale is
    applied to the projection (`[T, rows]`), not to `x`."""
    inv_rms = torch.rsqrt(x.square().mean(-1, keepdim=True) + norm_eps)  # [T, 1]
    return torch.addcmul(fp32(base), F.linear(x, fp32(fn)), fp32(scale) * inv_rms)


TOKENS_LAST_MIN = 16  # tokens from which Sinkhorn runs on the tokens-last layout


@lru_cache(maxsize=None)
def _sum_vectors(n: int, eps: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ones `[1, n, 1]`, ones `[1, 1, n]`, eps `[1, 1, 1]`): row and column sums as matmuls."""
    return (torch.ones(1, n, 1, device=device), torch.ones(1, 1, n, device=device),
            torch.full((1, 1, 1), eps, device=device))


def sinkhorn(comb: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """`iters` normalisations of positive `[T, n, n]` matrices, each `x / (sum + eps)`: one of
    the columns, then (rows, columns) pairs. Overwrites `comb` on CPU and at small T."""
    if native.sinkhorn_(comb, eps, iters):
        return comb
    t, n, _ = comb.shape
    if t >= TOKENS_LAST_MIN:
        x = comb.permute(1, 2, 0).contiguous()  # [n (rows i), n (columns j), T]
        x.div_(x.sum(0, keepdim=True).add_(eps))
        for _ in range(iters - 1):
            x.div_(x.sum(1, keepdim=True).add_(eps))
            x.div_(x.sum(0, keepdim=True).add_(eps))
        return x.permute(2, 0, 1)
    ones_col, ones_row, eps_t = _sum_vectors(n, eps, comb.device)
    ones_col, ones_row = ones_col.expand(t, n, 1), ones_row.expand(t, 1, n)
    row_sums, col_sums = comb.new_empty(t, n, 1), comb.new_empty(t, 1, n)
    torch.div(comb, torch.baddbmm(eps_t, ones_row, comb, out=col_sums), out=comb)
    for _ in range(iters - 1):
        torch.div(comb, torch.baddbmm(eps_t, comb, ones_col, out=row_sums), out=comb)
        torch.div(comb, torch.baddbmm(eps_t, ones_row, comb, out=col_sums), out=comb)
    return comb


def hc_pre(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
           norm_eps: float, eps: float, sinkhorn_iters: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns `(collapsed [T, D], post [T, n], comb [T, n, n])`."""
    mixed = native.hc_pre(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters)
    if mixed is not None:
        return mixed
    t, n, _ = streams.shape
    x = fp32(streams.flatten(1))  # [T, n*D]
    z = _mix(x, fn, fp32(scale).index_select(0, _which_scale(n, streams.device)), base, norm_eps)  # [T, (2+n)n]
    gates = torch.sigmoid(z[:, :2 * n])  # [T, 2n]: pre, post
    pre, post = gates[:, :n] + eps, gates[:, n:] * 2
    comb = torch.softmax(z[:, 2 * n:].view(t, n, n), dim=-1).add_(eps)
    collapsed = (pre.unsqueeze(-1) * x.view(t, n, -1)).sum(1)  # [T, D]
    return collapsed.to(streams.dtype), post, sinkhorn(comb, eps, sinkhorn_iters)


def hc_pre_norm(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                norm_eps: float, eps: float, sinkhorn_iters: int, weight: torch.Tensor, out_eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`kernels.composed.hc_pre_norm`: a few fp32 CPU tokens take one native call."""
    mixed = native.hc_pre(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters, weight, out_eps)
    if mixed is not None:
        return mixed
    return composed.hc_pre_norm(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters, weight, out_eps)


def hc_post(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor,
            comb: torch.Tensor) -> torch.Tensor:
    """`Y[t, k] = post[t, k] * out[t] + sum_j comb[t, j, k] * X[t, j]`."""
    mixed = native.hc_post(block_out, streams, post, comb)
    if mixed is not None:
        return mixed
    dtype = streams.dtype
    spread = cast(post, dtype).unsqueeze(-1) * block_out.unsqueeze(1)  # [T, n, D]
    return torch.baddbmm(spread, cast(comb, dtype).transpose(1, 2), streams)


def hc_head(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
            norm_eps: float, eps: float) -> torch.Tensor:
    """Collapse the streams once more after the last layer: `[T, n, D] -> [T, D]`."""
    collapsed = native.hc_head(streams, fn, scale, base, norm_eps, eps)
    if collapsed is not None:
        return collapsed
    x = fp32(streams.flatten(1))  # [T, n*D]
    pre = torch.sigmoid(_mix(x, fn, scale, base, norm_eps)) + eps  # [T, n]
    return (pre.unsqueeze(-1) * x.view(*streams.shape)).sum(1).to(streams.dtype)


def hc_head_norm(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                 norm_eps: float, eps: float, weight: torch.Tensor, out_eps: float) -> torch.Tensor:
    """`kernels.composed.hc_head_norm`: a few fp32 CPU tokens take one native call."""
    normed = native.hc_head(streams, fn, scale, base, norm_eps, eps, weight, out_eps)
    if normed is not None:
        return normed
    return composed.hc_head_norm(streams, fn, scale, base, norm_eps, eps, weight, out_eps)
