"""Lightning-indexer top-k (torch reference).

`I[t, w] = sum_h weights[t, h] * relu(q[t, h] . k_w)` over the compressed indexer keys a
query may see, then the `topk` best of them as rows of the key pool, -1 where a query sees
fewer. The result is the CSA part of the sparse-attention row lists.

Queries come in groups that share candidate lists row by row: a prefill chunk is one row
(`G = 1`) of `Tq` queries of one request over that request's entries; a set of decode
tokens is `G` rows of one query each. Scores are computed a bounded slab at a time
(`SCORE_BUDGET` bytes of `[rows, H, E]` dot products), so a long prompt never holds a
`[T, H, E]` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

SCORE_BUDGET = 4 << 20  # bytes of head-wise dot products per slab (cache-sized: fastest on CPU)


@dataclass
class QueryGroup:
    tokens: torch.Tensor  # [G, Tq] rows of q (flat token index)
    candidates: torch.Tensor  # [G, E] key-pool rows of each row's entries in order, -1 past its last
    visible: torch.Tensor  # [G, Tq] how many leading candidates each query may pick
    visible_host: np.ndarray  # the same on the host: slabs score only candidates some query sees


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, groups: Sequence[QueryGroup],
                 topk: int) -> torch.Tensor:
    """q: `[T, H, d]`, weights: `[T, H]` (all scales folded in), keys: `[S, d]` pool.
    Returns `[T, K]` int64 key-pool rows, `K = min(topk, max E)`, best first, so each query's
    `min(topk, visible)` picks lead its row and -1 pads the rest."""
    t, h, d = q.shape
    width = min(topk, max((g.candidates.shape[1] for g in groups), default=0))
    out = torch.full((t, width), -1, dtype=torch.long, device=q.device)
    for group in groups:
        g, tq = group.tokens.shape
        e = group.candidates.shape[1]
        if min(topk, e) == 0:
            continue
        pool = keys.index_select(0, group.candidates.clamp(min=0).view(-1)).view(g, e, d).float()  # [G, E, d]
        tq_step = min(tq, max(1, SCORE_BUDGET // (h * e * 4)))
        g_step = min(g, max(1, SCORE_BUDGET // (tq_step * h * e * 4)))
        for g0 in range(0, g, g_step):
            g1 = min(g, g0 + g_step)
            for t0 in range(0, tq, tq_step):
                t1 = min(tq, t0 + tq_step)
                es = int(group.visible_host[g0:g1, t0:t1].max())  # candidates beyond are hidden from all
                k = min(topk, es)
                if k == 0:
                    continue
                tokens = group.tokens[g0:g1, t0:t1].reshape(-1)
                n = t1 - t0
                qs = q.index_select(0, tokens).view(g1 - g0, n * h, d).float()
                dots = torch.bmm(qs, pool[g0:g1, :es].transpose(1, 2)).relu_()  # [g, n*H, es]
                ws = weights.index_select(0, tokens).view(-1, 1, h).float()
                scores = torch.bmm(ws, dots.view(-1, h, es)).view(g1 - g0, n, es)  # [g, n, es]
                hidden = torch.arange(es, device=q.device) >= group.visible[g0:g1, t0:t1].unsqueeze(-1)
                vals, local = scores.masked_fill_(hidden, float("-inf")).topk(k, dim=-1)  # best first
                rows = group.candidates[g0:g1].gather(1, local.view(g1 - g0, n * k)).view(-1, k)
                out[:, :k].index_copy_(0, tokens, rows.masked_fill_(vals.view(-1, k) == float("-inf"), -1))
    return out
