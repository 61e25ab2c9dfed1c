"""Modules and collectives of a sharded model: the vocabulary-parallel embedding and head,
and expert-parallel dispatch of routed experts.

At world size 1 the network uses `nn.Embedding` / `nn.Linear` and calls the experts
directly, so none of this runs (no collective, no copy).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .parallel import Parallel


class VocabParallelEmbedding(nn.Module):
    """Rows `tp_part(vocab)` of the embedding; ids of other ranks' rows look up zeros, and an
    all-reduce over the TP ranks fills them in (exact: each row has one non-zero summand)."""

    def __init__(self, vocab_size: int, dim: int, dtype: torch.dtype, parallel: Parallel) -> None:
        super().__init__()
        part = parallel.tp_part(vocab_size)
        self.start, self.rows, self.comm = part.start, part.stop - part.start, parallel.tp_comm
        self.weight = nn.Parameter(torch.zeros(self.rows, dim, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill_(outside.unsqueeze(-1), 0)
        return self.comm.all_reduce(out)  # [T, D]


class ParallelHead(nn.Module):
    """Rows `tp_part(vocab)` of the output head; the logits are all-gathered along the vocabulary."""

    def __init__(self, dim: int, vocab_size: int, dtype: torch.dtype, parallel: Parallel) -> None:
        super().__init__()
        part = parallel.tp_part(vocab_size)
        self.comm = parallel.tp_comm
        self.weight = nn.Parameter(torch.zeros(part.stop - part.start, dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_gather(F.linear(x, self.weight), dim=-1)  # [T, V]


Experts = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _token_slice(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of `n` replicated tokens (the first `n % world` get one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def expert_parallel_moe(x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, experts: Experts,
                        parallel: Parallel, n_experts: int) -> torch.Tensor:
    """Routed experts partitioned over all ranks.

    x: `[T, D]`, idx / weights: `[T, k]` global expert ids and routing weights.
    `experts(rows, local_idx [R, 1], ones [R, 1])` runs this rank's experts.

    When every rank holds the same tokens (TP or replicated attention; bitwise-equal routing),
    each rank takes a contiguous share of them; under data-parallel attention a rank's share is
    its own batch (possibly empty: an idle rank still serves its experts). The share's
    token-expert pairs are all-to-alled to the experts' owners (uneven splits, a rank may send
    or receive none), which run them and all-to-all the rows back; the token's rank sums them
    with its routing weights in fp32. With replicated tokens an all-gather then gives every rank
    every token's result. Returns `[T, D]`.
    """
    comm, world = parallel.world_comm, parallel.world_comm.world_size
    per_rank = n_experts // world
    t, k = idx.shape
    replicated = parallel.config.tokens_replicated
    mine = _token_slice(t, comm.rank, world) if replicated else slice(0, t)
    pair_expert = idx[mine].flatten()  # [n*k] this rank's token-expert pairs
    dest, order = (pair_expert // per_rank).sort(stable=True)  # pairs grouped by owner rank
    send = torch.bincount(dest, minlength=world)
    recv = comm.all_to_all(send, [1] * world, [1] * world)  # [world] pairs each rank sends here
    send_counts, recv_counts = send.tolist(), recv.tolist()
    token = order // k + mine.start  # [n*k] row of x of each sorted pair
    rows = comm.all_to_all(x.index_select(0, token), send_counts, recv_counts)  # [R, D]
    local = comm.all_to_all(pair_expert.index_select(0, order) % per_rank, send_counts, recv_counts)  # [R]
    ones = torch.ones(local.shape[0], 1, device=x.device)
    done = comm.all_to_all(experts(rows, local.unsqueeze(1), ones), recv_counts, send_counts)  # [n*k, D]
    scaled = done.float() * weights[mine].flatten().index_select(0, order).unsqueeze(1)
    out = torch.zeros(mine.stop - mine.start, x.shape[1], device=x.device).index_add_(0, token - mine.start, scaled)
    if not replicated:
        return out.to(x.dtype)
    # all-gather needs equal shares: pad each rank's tokens to the largest share
    width = -(-t // world)
    padded = torch.zeros(width, x.shape[1], device=x.device)
    padded[:out.shape[0]] = out
    gathered = comm.all_gather(padded)  # [world * width, D]
    keep = torch.cat([torch.arange(r * width, r * width + _token_slice(t, r, world).stop
                                   - _token_slice(t, r, world).start) for r in range(world)])
    return gathered.index_select(0, keep.to(x.device)).to(x.dtype)
