"""Lightning-indexer scores (torch reference): `I[t, w] = sum_h w[t, h] * relu(q[t, h] . k[w])`."""

import torch


def indexer_scores(q: torch.Tensor, keys: torch.Tensor, head_weights: torch.Tensor, scale: float) -> torch.Tensor:
    """q: `[B, Tq, H, d]`, keys: `[B, E, d]`, head_weights: `[B, Tq, H]`.

    Returns fp32 `[B, Tq, E]`.
    """
    dots = torch.matmul(q.float(), keys.float().unsqueeze(1).transpose(-1, -2))  # [B, Tq, H, E]
    return (torch.relu(dots) * scale * head_weights.float().unsqueeze(-1)).sum(dim=2)
