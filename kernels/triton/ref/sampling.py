"""Sync-free sampling: a Gumbel-max draw whose noise is a counter-based hash.

`u(seed, step, token)` is a 24-bit uniform in (0, 1) from a 32-bit integer hash of the
request's seed, its decode step and the token id, so a draw needs no generator state, no
host round trip, and gives the same token on every backend and in every batch layout.
Token = argmax(logits / T + Gumbel(u)), i.e. an exact sample of softmax(logits / T);
rows with temperature 0 take the argmax (the first maximum).

The hash is Chris Wellons' "lowbias32" mixer, computed in int64 with 32-bit masks so that
torch (which lacks uint32 arithmetic) and Triton produce the same bits.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MUL1, MUL2 = 0x7FEB352D, 0x846CA68B
GOLDEN = 0x9E3779B9


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 values holding 32-bit words."""
    x = x & MASK32
    x = ((x ^ (x >> 16)) * MUL1) & MASK32
    x = ((x ^ (x >> 15)) * MUL2) & MASK32
    return x ^ (x >> 16)


def hash_uniform(seed: torch.Tensor, step: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """fp32 uniforms in (0, 1) for int64 `seed`, `step`, `token` (broadcast together)."""
    h = mix32(seed ^ (seed >> 32))
    h = mix32(h ^ ((step * GOLDEN) & MASK32))
    h = mix32(h ^ ((token * GOLDEN) & MASK32))
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def sample(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor,
                     steps: torch.Tensor) -> torch.Tensor:
    """`logits [B, V]` fp32, `temperature [B]` (0 = greedy), `seeds [B]`, `steps [B]` int64 -> `[B]` int64."""
    vocab = torch.arange(logits.shape[1], device=logits.device)
    u = hash_uniform(seeds[:, None], steps[:, None], vocab[None, :])
    gumbel = -torch.log(-torch.log(u))
    hot = temperature > 0
    scaled = logits.float() / torch.where(hot, temperature, 1.0)[:, None] + torch.where(hot[:, None], gumbel, 0.0)
    return scaled.max(dim=-1).indices
