"""Sync-free sampling: per row, `argmax(logits / T + Gumbel(u))` (greedy where T = 0) with the
counter-based uniforms of `ref.sampling` (hash of seed, step and token id), so the draw needs
no host round trip, no generator state, and equals the torch reference bit for bit.

One program per row streams the vocabulary in blocks, keeping the running best value and
its first index. Top-k / top-p / min-p truncation is not fused here.
"""

from __future__ import annotations

import torch

from ._compat import check_device, triton, tl
from .ref.sampling import GOLDEN, MASK32, MUL1, MUL2

_MASK32, _MUL1, _MUL2, _GOLDEN = (tl.constexpr(v) for v in (MASK32, MUL1, MUL2, GOLDEN))


@triton.jit
def _mix32(x):
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * _MUL1) & _MASK32
    x = ((x ^ (x >> 15)) * _MUL2) & _MASK32
    return x ^ (x >> 16)


@triton.jit
def _sample_kernel(logits_ptr, temp_ptr, seed_ptr, step_ptr, out_ptr, V, stride_lb, BLOCK_V: tl.constexpr):
    b = tl.program_id(0)
    temperature = tl.load(temp_ptr + b)
    hot = temperature > 0
    inv_t = 1.0 / tl.where(hot, temperature, 1.0)
    seed = tl.load(seed_ptr + b).to(tl.int64)
    h = _mix32(seed ^ (seed >> 32))
    h = _mix32(h ^ ((tl.load(step_ptr + b).to(tl.int64) * _GOLDEN) & _MASK32))
    best = tl.full((1,), float("-inf"), tl.float32)
    best_at = tl.zeros((1,), tl.int64)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        mask = offs < V
        x = tl.load(logits_ptr + b * stride_lb + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        u = ((_mix32(h ^ ((offs.to(tl.int64) * _GOLDEN) & _MASK32)) >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        x = x - tl.where(hot, tl.log(-tl.log(u)), 0.0)  # minus log(-log u): Gumbel noise
        top = tl.max(x, axis=0)
        at = tl.min(tl.where(x == top, offs, V), axis=0).to(tl.int64)
        better = top > best  # strictly: an earlier block keeps ties
        best_at = tl.where(better, at, best_at)
        best = tl.where(better, top, best)
    tl.store(out_ptr + b + tl.arange(0, 1), best_at)


def sample(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """`logits [B, V]`, `temperature [B]` fp32 (0 = greedy), `seeds`/`steps [B]` int64 -> tokens `[B]` int64."""
    b, v = logits.shape
    check_device(logits, temperature, seeds, steps)
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    _sample_kernel[(b,)](logits, temperature.float().contiguous(), seeds.contiguous(), steps.contiguous(), out, v,
                         logits.stride(0), BLOCK_V=min(4096, triton.next_power_of_2(v)))
    return out
