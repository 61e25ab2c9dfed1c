"""Lightning-indexer top-k (torch reference).

`I[t, w] = sum_h weights[t, h] * relu(q[t, h] . k_w)` over the compressed indexer keys a
query may see, then the `topk` best of them as rows of the key pool, -1 where a query sees
fewer. The result is the CSA part of the sparse-attention row lists.

Queries come in groups that share candidate lists row by row: a prefill chunk is one row
(`G = 1`) of `Tq` queries of one request over that request's entries; a set of decode
tokens is `G` rows of one query each. Scores are computed a bounded slab at a time
(`SCORE_BUDGET` bytes of `[rows, H, E]` dot products), so a long prompt never holds a
`[T, H, E]` tensor. On CPU a C loop scores instead (`kernels.native.indexer_scores`): it reads
each candidate key straight from the pool and sums the heads as it goes, for decode groups and
for prefill chunks (whose slabs then hold `[queries, E]` scores, not `[queries, H, E]`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from . import native
from .casts import fp32

SCORE_BUDGET = 4 << 20  # bytes of head-wise dot products per slab (cache-sized: fastest on CPU)


@dataclass
class _Slab:
    """A block of one group's queries scored at once (host facts decide what it needs)."""

    rows: slice  # group rows
    queries: slice  # query columns
    tokens: torch.Tensor  # [g * n] flat token index
    width: int  # leading candidates any of its queries sees
    hidden: torch.Tensor | None  # [g, n, width] candidates a query may not pick (None: it sees all)
    short: bool  # some query sees fewer than top-k candidates


@dataclass
class QueryGroup:
    tokens: torch.Tensor  # [G, Tq] rows of q (flat token index)
    candidates: torch.Tensor  # [G, E] key-pool rows of each row's entries in order, -1 past its last
    visible: torch.Tensor  # [G, Tq] how many leading candidates each query may pick
    visible_host: np.ndarray  # the same on the host: slabs score only candidates some query sees

    def __post_init__(self) -> None:
        self._slabs: dict[tuple[int, int], list[_Slab]] = {}

    @cached_property
    def safe_candidates(self) -> torch.Tensor:
        return self.candidates.clamp(min=0)

    def slabs(self, heads: int, topk: int) -> list[_Slab]:
        """The blocks of `SCORE_BUDGET` dot products, planned once per group (every CSA layer
        of a forward shares its groups)."""
        key = (heads, topk)
        if key not in self._slabs:
            self._slabs[key] = list(self._plan_slabs(heads, topk))
        return self._slabs[key]

    def _plan_slabs(self, heads: int, topk: int):
        g, tq = self.tokens.shape
        e = self.candidates.shape[1]
        if e == 0:
            return
        tq_step = min(tq, max(1, SCORE_BUDGET // (heads * e * 4)))
        g_step = min(g, max(1, SCORE_BUDGET // (tq_step * heads * e * 4)))
        for g0 in range(0, g, g_step):
            for t0 in range(0, tq, tq_step):
                rows, queries = slice(g0, min(g, g0 + g_step)), slice(t0, min(tq, t0 + tq_step))
                seen = self.visible_host[rows, queries]
                width = int(seen.max())  # candidates beyond are hidden from all its queries
                if width == 0:
                    continue
                hidden = None
                if (seen < width).any():
                    hidden = torch.arange(width, device=self.visible.device) >= self.visible[rows, queries].unsqueeze(-1)
                yield _Slab(rows, queries, self.tokens[rows, queries].reshape(-1), width, hidden,
                            bool((seen < topk).any()))


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, groups: Sequence[QueryGroup],
                 topk: int) -> torch.Tensor:
    """q: `[T, H, d]`, weights: `[T, H]` (all scales folded in), keys: `[S, d]` pool.
    Returns `[T, K]` int64 key-pool rows, `K = min(topk, max E)`, best first, so each query's
    `min(topk, visible)` picks lead its row and -1 pads the rest."""
    t, h, d = q.shape
    width = min(topk, max((g.candidates.shape[1] for g in groups), default=0))
    out = torch.full((t, width), -1, dtype=torch.long, device=q.device)
    q, weights = fp32(q), fp32(weights)
    for group in groups:
        g, e = group.candidates.shape
        if group.tokens.shape[1] == 1 and _single_queries(q, weights, keys, group, topk, out):
            continue
        if g == 1 and _native_chunk(q, weights, keys, group, topk, out):
            continue
        slabs = group.slabs(h, topk)
        if not slabs:
            continue
        pool = fp32(keys.index_select(0, group.safe_candidates.view(-1)).view(g, e, d))  # [G, E, d]
        for slab in slabs:
            gn, k = slab.rows.stop - slab.rows.start, min(topk, slab.width)
            qs = q.index_select(0, slab.tokens).view(gn, -1, d)  # [g, n*H, d]
            dots = torch.bmm(qs, pool[slab.rows, :slab.width].transpose(1, 2)).relu_()  # [g, n*H, width]
            scores = torch.bmm(weights.index_select(0, slab.tokens).unsqueeze(1),
                               dots.view(-1, h, slab.width)).view(gn, -1, slab.width)  # [g, n, width]
            if slab.hidden is not None:
                scores.masked_fill_(slab.hidden, float("-inf"))
            vals, local = scores.topk(k, dim=-1)  # best first
            rows = group.candidates[slab.rows].gather(1, local.view(gn, -1)).view(-1, k)
            if slab.short:
                rows.masked_fill_(vals.view(-1, k) == float("-inf"), -1)
            out[:, :k].index_copy_(0, slab.tokens, rows)
    return out


def _single_queries(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, group: QueryGroup, topk: int,
                    out: torch.Tensor) -> bool:
    """The top-k of a group of one query per row through the native scores; False where that
    path does not apply."""
    tokens = group.tokens[:, 0]
    scores = native.indexer_scores(q.index_select(0, tokens), weights.index_select(0, tokens), keys,
                                   group.safe_candidates, group.visible[:, 0])  # [G, E]
    if scores is None:
        return False
    rows = _best(scores, topk, group.candidates)
    out[:, :rows.shape[1]].index_copy_(0, tokens, rows)
    return True


def _native_chunk(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, group: QueryGroup, topk: int,
                  out: torch.Tensor) -> bool:
    """The top-k of one prefill chunk (a group of one row) through the native scores, a slab of
    `SCORE_BUDGET` bytes of `[queries, candidates]` scores at a time (the head sums are made
    inside, so a slab holds 1/H of the torch path's dot products); False where the native path
    does not apply (it is tried on the first slab)."""
    for slab in group.slabs(1, topk):
        scores = native.indexer_scores(q.index_select(0, slab.tokens), weights.index_select(0, slab.tokens), keys,
                                       group.safe_candidates[:, :slab.width],
                                       group.visible[0, slab.queries])  # [n, width]
        if scores is None:
            return False
        rows = _best(scores, topk, group.candidates)
        out[:, :rows.shape[1]].index_copy_(0, slab.tokens, rows)
    return True


def _best(scores: torch.Tensor, topk: int, candidates: torch.Tensor) -> torch.Tensor:
    """The candidates `[n, k]` of each row's best native scores `[n, E]`, best first, -1 past the
    visible ones; `candidates [n or 1, >= E]`."""
    k = min(topk, scores.shape[1])
    rows = native.topk_rows(scores, k, candidates)
    if rows is not None:
        return rows
    vals, local = scores.topk(k, dim=-1)  # best first
    rows = candidates.expand(scores.shape[0], -1).gather(1, local)
    return rows.masked_fill_(vals == float("-inf"), -1)
