"""V4's KV compressors: gated softmax pooling of `m` (HCA) or 2x`m` overlapping (CSA) tokens.

Each token contributes `kv = wkv(x)` and `score = wgate(x) + ape[pos % m]`. For CSA both
are `2d` wide: the first half (Ca) feeds the *next* window's entry, the second half (Cb)
the current window's. Entries are RMS-normed and RoPE'd at position `w * m`.

What closes in a batch (entries, page snapshots) is known from the batch's lengths, so
the plan decides on the host which steps run; no step looks at device values. Closing
windows (gathered from the batch and the rings, pooled, normed, RoPE'd, inserted) are one
`kernels.dispatch.compress_emit`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import composed, dispatch
from .batch import BatchPlan
from .kv_cache import CompressorStore
from .linear import Linear
from .norm import RMSNorm
from .positional import RopeTables


class Compressor(nn.Module):
    def __init__(self, hidden: int, dim: int, ratio: int, overlap: bool, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        width = 2 * dim if overlap else dim
        self.dim, self.ratio, self.overlap = dim, ratio, overlap
        self.wkv = Linear(hidden, width, dtype)
        self.wgate = Linear(hidden, width, dtype)
        self.ape = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, plan: BatchPlan, store: CompressorStore, rope: RopeTables) -> None:
        """Project this batch's tokens, emit the entries of every window that closes, and
        update the request rings and page snapshots in `store`."""
        m, d = self.ratio, self.dim
        rows = dispatch.compressor_rows(x, self.wkv.argument(), self.wgate.argument(), self.ape,
                                        plan.ape_index[m])  # [N, 2, width]
        em = plan.emissions[(m, self.overlap)]

        if em.num_entries:
            dispatch.compress_emit(rows, store.ring, em.row_source, self.overlap, self.norm.weight, self.norm.eps,
                                   rope.entries(m, self.overlap), store.entries, em.entry_slots, store.qdq)
            store.simulate_fp8_keys(em.entry_slots)

        if em.num_snapshots:
            last = composed.gather_rows(rows, store.ring, em.snapshot_source)  # [P, m, 2, width]
            store.snapshots[em.snapshot_pages] = last[..., :d]
            store.snapshot_home[em.snapshot_homes[0]] = em.snapshot_homes[1]

        store.ring.view(-1, *rows.shape[1:]).index_copy_(0, em.ring_dest, rows.index_select(0, em.ring_src))
