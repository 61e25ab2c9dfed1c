"""Linear layers over weights in their stored format (dense, FP8 block-scaled, packed FP4).

CPU/torch reference: a dense weight goes straight to `F.linear`; a quantised one is
dequantised `TILE_ROWS` output rows at a time into scratch in the activation dtype and
multiplied tile by tile, so no full dequantised copy of the weight ever exists. Every
tile holds exactly the values of `weight.dequantize()` (E8M0 scales are powers of two,
so the cast to bf16 is exact too); each output column is one tile's `F.linear`.

Three shapes of use:

* `linear(x, w)`: `x [..., K]`, `w [N, K]` -> `[..., N]`;
* `grouped_linear(x, w)`: V4's `wo_a`, `x [T, G, D]`, `w [G*R, D]` -> `[T, G, R]`
  (`einsum("ngd,grd->ngr")` with `w` viewed as `[G, R, D]`);
* `expert_linear(x, w, counts)`: stacked experts `w [E, N, K]` applied to `x [T, K]`
  whose rows are grouped by expert, `counts[e]` rows for expert `e` -> `[T, N]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .casts import cast
from .quant import QuantizedWeight


def _check_2d(weight: QuantizedWeight, k: int) -> tuple[int, int]:
    if len(weight.shape) != 2:
        raise ValueError(f"expected a 2-D weight, got shape {weight.shape}")
    n, wk = weight.shape
    if wk != k:
        raise ValueError(f"input has {k} features but the weight {weight.shape} expects {wk}")
    return n, wk


def linear(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """`F.linear(x, weight.dequantize())` without materialising the dequantised weight."""
    n, _ = _check_2d(weight, x.shape[-1])
    if weight.fmt == "dense":
        return F.linear(x, weight.data.to(x.dtype))
    out = x.new_empty(*x.shape[:-1], n)
    for a, b, tile in weight.tiles(x.dtype):  # tile: [b - a, K]
        out[..., a:b] = F.linear(x, tile)
    return out


def grouped_linear(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """`x [T, G, D]` times `weight [G*R, D]` viewed as `[G, R, D]`, per group -> `[T, G, R]`."""
    t, g, d = x.shape
    n, _ = _check_2d(weight, d)
    if n % g:
        raise ValueError(f"weight rows {n} do not split into {g} groups")
    r = n // g
    if weight.fmt == "dense":  # one bmm over the groups ([G, T, D] x [G, D, R]): ~3x faster than einsum's plan at T = 1
        w = cast(weight.data, x.dtype)
        return torch.bmm(x.transpose(0, 1), w.view(g, r, d).transpose(1, 2)).transpose(0, 1)
    out = x.new_empty(t, g, r)
    for j in range(g):
        for a, b, tile in weight.tiles(x.dtype, j * r, (j + 1) * r):  # tile: [b - a, D]
            out[:, j, a - j * r:b - j * r] = F.linear(x[:, j], tile)
    return out


def expert_linear(x: torch.Tensor, weight: QuantizedWeight, counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Rows `x[offset_e : offset_e + counts[e]]` through expert `e` of `weight [E, N, K]` -> `[T, N]`."""
    counts = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    if len(weight.shape) != 3 or len(counts) != weight.shape[0]:
        raise ValueError(f"need one count per expert of a stacked [E, N, K] weight; got {len(counts)} counts "
                         f"for weight {weight.shape}")
    if sum(counts) != x.shape[0]:
        raise ValueError(f"expert counts sum to {sum(counts)} but x has {x.shape[0]} rows")
    out = x.new_empty(x.shape[0], weight.shape[1])
    start = 0
    for e, count in enumerate(counts):
        if count:
            out[start:start + count] = linear(x[start:start + count], weight[e])
        start += count
    return out
