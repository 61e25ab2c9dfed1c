"""Gated softmax pooling used by V4's KV compressors (torch reference)."""

import torch


def softmax_pool(kv: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Pool `[E, S, d]` slots into `[E, d]` with a per-channel softmax over the S slots.

    Slots with score -inf get weight 0. The softmax runs in fp32; the weighted sum in
    kv's dtype.
    """
    weights = torch.softmax(score.float(), dim=1).to(kv.dtype)
    return (kv * weights).sum(dim=1)
