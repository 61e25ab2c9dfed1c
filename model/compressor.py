"""V4's KV compressors: gated softmax pooling of `m` (HCA) or 2x`m` overlapping (CSA) tokens.

Each token contributes `kv = wkv(x)` and `score = wgate(x) + ape[pos % m]`. For CSA both
are `2d` wide: the first half (Ca) feeds the *next* window's entry, the second half (Cb)
the current window's. Entries are RMS-normed and RoPE'd at position `w * m`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.compress import softmax_pool
from ..kernels.rope import apply_rope, rope_cos_sin
from .batch import BatchPlan, RowSource
from .kv_cache import CompressorStore
from .norm import RMSNorm


def _gather_rows(rows: torch.Tensor, ring: torch.Tensor, src: RowSource) -> torch.Tensor:
    """Rows `[..., 2, width]` for each (request, position) of `src`."""
    ring_flat = ring.view(-1, *ring.shape[2:])
    picked = torch.where(src.from_batch[..., None, None], rows[src.token_index], ring_flat[src.ring_row])
    return picked


class Compressor(nn.Module):
    def __init__(self, hidden: int, dim: int, ratio: int, overlap: bool, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        width = 2 * dim if overlap else dim
        self.dim, self.ratio, self.overlap = dim, ratio, overlap
        self.wkv = nn.Linear(hidden, width, bias=False, dtype=dtype)
        self.wgate = nn.Linear(hidden, width, bias=False, dtype=dtype)
        self.ape = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, plan: BatchPlan, store: CompressorStore, inv_freq: torch.Tensor) -> None:
        """Project this batch's tokens, emit the entries of every window that closes, and
        update the request rings and page snapshots in `store`."""
        m, d = self.ratio, self.dim
        kv = self.wkv(x).float()
        score = self.wgate(x).float() + self.ape[plan.positions % m]
        rows = torch.stack([kv, score], dim=1)  # [N, 2, width]
        em = plan.emission(m, self.overlap)

        if em.entry_slots.numel():
            slots = _gather_rows(rows, store.ring, em.row_source)  # [E, S, 2, width]
            if self.overlap:  # Ca of the previous window, then Cb of this one
                slots = torch.cat([slots[:, :m, :, :d], slots[:, m:, :, d:]], dim=1)
            slot_kv = slots[:, :, 0]
            slot_score = slots[:, :, 1].masked_fill(~em.row_source.valid.unsqueeze(-1), float("-inf"))
            entries = self.norm(softmax_pool(slot_kv, slot_score))
            cos, sin = rope_cos_sin(em.entry_pos, inv_freq)
            store.entries[em.entry_slots] = apply_rope(entries, cos, sin).to(store.entries.dtype)

        if em.snapshot_source is not None and em.snapshot_pages.numel():
            last = _gather_rows(rows, store.ring, em.snapshot_source)  # [P, m, 2, width]
            store.snapshots[em.snapshot_pages] = last[..., :d]

        if em.ring_dest.numel():
            store.ring.view(-1, *store.ring.shape[2:])[em.ring_dest] = rows[em.ring_src]
