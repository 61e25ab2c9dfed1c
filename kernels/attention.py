"""Shared-KV multi-query attention with a per-head sink (torch reference).

One key vector per position serves as key and value (V4's K=V MQA). The sink is a
per-head logit that joins the softmax denominator but has no value.
"""

import torch


def sink_attention(q: torch.Tensor, kv: torch.Tensor, visible: torch.Tensor, sink: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Attention of padded query groups over padded shared K=V entries.

    q: `[B, H, Tq, d]`, kv: `[B, K, d]`, visible: `[B, Tq, K]` bool, sink: `[H]` (fp32).
    Returns `[B, Tq, H, d]` in q's dtype. Rows with no visible key attend to the sink only.
    """
    scores = torch.matmul(q, kv.unsqueeze(1).transpose(-1, -2)).float() * scale  # [B, H, Tq, K]
    scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
    sink_logit = sink.float().view(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
    logits = torch.cat([scores, sink_logit], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    out = torch.matmul(probs.to(kv.dtype), kv.unsqueeze(1))  # [B, H, Tq, d]
    return out.transpose(1, 2).to(q.dtype)
