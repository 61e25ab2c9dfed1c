"""Manifold-constrained hyper-connections (mHC): mixing V4's residual streams.

The residual is `[T, n, D]` (n = hc_mult streams). Before each block the streams are
collapsed with weights `pre`; after it the block output is spread back with `post` and
the old streams are mixed by `comb`, a doubly-stochastic n x n matrix from Sinkhorn.
All coefficient math runs in fp32.

Small batches are bound by the number of ops, not by bytes, so each step is as few ops
as keeps the oracle's arithmetic: a Sinkhorn half-step is one batched matmul (sums plus
eps, against a ones vector) and one division, and the collapse and the post-mix are one
batched matmul each.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .norm import rms_norm


@lru_cache(maxsize=None)
def _constants(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ones `[1, n, 1]`, ones `[1, 1, n]`, which of `scale[0:2]` scales each of the 2n gates)."""
    gate_scale = torch.arange(2, device=device).repeat_interleave(n)
    return torch.ones(1, n, 1, device=device), torch.ones(1, 1, n, device=device), gate_scale


def _mix_inputs(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """`fn . rms_norm(flatten(streams))`: `[T, n*D] -> [T, fn rows]` in fp32."""
    return F.linear(rms_norm(streams.flatten(1).float(), None, norm_eps), fn.float())


def sinkhorn(comb: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """`iters` normalisations of positive `[T, n, n]` matrices: one of the columns, then
    (rows, columns) pairs, each `x / (sum + eps)`. In place (and into reused buffers)."""
    t, n, _ = comb.shape
    ones_col, ones_row, _ = _constants(n, comb.device)
    ones_col, ones_row = ones_col.expand(t, n, 1), ones_row.expand(t, 1, n)
    eps_t = comb.new_full((1, 1, 1), eps)
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
    mix = _mix_inputs(streams, fn, norm_eps)  # [T, (2 + n) * n]
    scale, base = scale.float(), base.float()
    gate_scale = scale.index_select(0, _constants(n, streams.device)[2])  # [2n]: scale[0] x n, scale[1] x n
    gates = torch.sigmoid(torch.addcmul(base[:2 * n], mix[:, :2 * n], gate_scale))
    pre, post = gates[:, :n] + eps, gates[:, n:] * 2
    comb = torch.softmax(torch.addcmul(base[2 * n:], mix[:, 2 * n:], scale[2]).view(t, n, n), dim=-1) + eps
    collapsed = torch.bmm(pre.unsqueeze(1), streams.float()).squeeze(1)  # [T, D]
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
    mix = _mix_inputs(streams, fn, norm_eps)  # [T, n]
    pre = torch.sigmoid(torch.addcmul(base.float(), mix, scale.float())) + eps
    return torch.bmm(pre.unsqueeze(1), streams.float()).squeeze(1).to(streams.dtype)
