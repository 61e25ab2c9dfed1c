"""Dtype casts that skip the op call when they are no-ops: each `.to()` costs microseconds,
which a batch-1 decode step pays hundreds of times."""

from __future__ import annotations

import torch


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(dtype)`, or `x` itself when it already has that dtype."""
    return x if x.dtype == dtype else x.to(dtype)


def fp32(x: torch.Tensor) -> torch.Tensor:
    """`x.float()`, or `x` itself when it is already fp32."""
    return cast(x, torch.float32)
