"""Interleaved (GPT-J style) rotary embedding on the trailing dims of a vector.

V4 rotates only the last `rope_dim` channels of each head, in pairs `(2i, 2i+1)`.
Layers with compression use theta=160000 with YaRN frequency interpolation and no
mscale; sliding-window-only layers use plain theta=10000.
"""

from __future__ import annotations

import math

import torch


def rope_inv_freq(rope_dim: int, theta: float, yarn_factor: float | None = None,
                  original_max_position: int = 65536, beta_fast: float = 32.0,
                  beta_slow: float = 1.0) -> torch.Tensor:
    """Per-pair angular frequencies `[rope_dim // 2]` (fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32, device="cpu") / rope_dim))
    if yarn_factor is None or yarn_factor <= 1.0:
        return inv_freq

    def correction_dim(rotations: float) -> float:
        return rope_dim * math.log(original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rope_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 -> keep the original frequency (extrapolate), 0 -> interpolate
    return inv_freq / yarn_factor * (1 - keep) + inv_freq * keep


def rope_table(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotations `exp(i * p * w)` `[..., rope_dim // 2]` (complex64) for integer positions;
    `.conj()` of a table rotates back."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(positions.device)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope_(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate in place the trailing `2 * table.shape[-1]` channels of `x` (`[T, ..., dim]`),
    pairs `(2i, 2i+1)` as complex numbers; `table` is `[T, rope_dim // 2]` and broadcasts over
    any middle dims. Computed in fp32 and written back in x's dtype. Returns `x`."""
    half = table.shape[-1]
    table = table.view(table.shape[0], *(1,) * (x.dim() - 2), half)
    tail = x[..., -2 * half:]
    if x.dtype == torch.float32:
        torch.view_as_complex(tail.unflatten(-1, (half, 2))).mul_(table)
    else:
        rotated = torch.view_as_complex(tail.float().unflatten(-1, (half, 2))) * table
        tail.copy_(torch.view_as_real(rotated).flatten(-2))
    return x
