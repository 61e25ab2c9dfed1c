"""Manifold-constrained hyper-connections (mHC): mixing V4's residual streams.

The residual is `[T, n, D]` (n = hc_mult streams). Before each block the streams are
collapsed with weights `pre`; after it the block output is spread back with `post` and
the old streams are mixed by `comb`, a doubly-stochastic n x n matrix from Sinkhorn.
All coefficient math runs in fp32.

Small batches are bound by the number of ops, not by bytes, so each step is as few ops
as keeps the oracle's arithmetic: a Sinkhorn half-step is one batched matmul (sums plus
eps, against a ones vector) and one division, and the collapse and the post-mix are one
batched matmul each. (`torch.compile` of the Sinkhorn loop was measured on CPU and left
out: 12-22 s to compile per process, 4 s with a warm cache; 55 against ~100 us at one
token, but slower than eager at 4096 tokens.)
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .norm import rms_norm


@lru_cache(maxsize=None)
def _constants(n: int, eps: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(ones `[1, n, 1]`, ones `[1, 1, n]`, eps `[1, 1, 1]`, which of the 3 scales scales each
    of the `(2 + n) * n` mixing coefficients)."""
    which_scale = torch.tensor([0] * n + [1] * n + [2] * n * n, device=device)
    return (torch.ones(1, n, 1, device=device), torch.ones(1, 1, n, device=device),
            torch.full((1, 1, 1), eps, device=device), which_scale)


def _mix_inputs(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """`fn . rms_norm(flatten(streams))`: `[T, n*D] -> [T, fn rows]` in fp32."""
    return F.linear(rms_norm(_f32(streams.flatten(1)), None, norm_eps), _f32(fn))


def sinkhorn(comb: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """`iters` normalisations of positive `[T, n, n]` matrices: one of the columns, then
    (rows, columns) pairs, each `x / (sum + eps)`. In place (and into reused buffers)."""
    t, n, _ = comb.shape
    ones_col, ones_row, eps_t, _ = _constants(n, eps, comb.device)
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
    t, n, _ = streams.shape
    which_scale = _constants(n, eps, streams.device)[3]
    z = torch.addcmul(_f32(base), _mix_inputs(streams, fn, norm_eps), _f32(scale).index_select(0, which_scale))
    gates = torch.sigmoid(z[:, :2 * n])  # [T, 2n]: pre, post
    pre, post = gates[:, :n] + eps, gates[:, n:] * 2
    comb = torch.softmax(z[:, 2 * n:].view(t, n, n), dim=-1) + eps
    collapsed = torch.bmm(pre.unsqueeze(1), _f32(streams)).squeeze(1)  # [T, D]
    return collapsed.to(streams.dtype), post, sinkhorn(comb, eps, sinkhorn_iters)


def hc_post(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor,
            comb: torch.Tensor) -> torch.Tensor:
    """`Y[t, k] = post[t, k] * out[t] + sum_j comb[t, j, k] * X[t, j]`."""
    dtype = streams.dtype
    spread = post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(1)  # [T, n, D]
    return torch.baddbmm(spread, comb.to(dtype).transpose(1, 2), streams)


def hc_head(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
            norm_eps: float, eps: float) -> torch.Tensor:
    """Collapse the streams once more after the last layer: `[T, n, D] -> [T, D]`."""
    pre = torch.sigmoid(torch.addcmul(_f32(base), _mix_inputs(streams, fn, norm_eps), _f32(scale))) + eps  # [T, n]
    return torch.bmm(pre.unsqueeze(1), _f32(streams)).squeeze(1).to(streams.dtype)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()
