"""Physical storage for V4's per-request attention state, addressed by page and slot.

The model reads and writes this storage only through the index tables of a
`ForwardBatch`; which page belongs to which request is decided outside the model (the
engine's pools and radix cache, or the simple allocator used by `model.generate`).

Per layer the storage holds:

* SWA KV: one vector per token, in `swa_pages * page_size` slots. Slot of position `p`
  of a request = `swa_page_table[p // P] * P + p % P`.
* Compressed entries (CSA, HCA, and the CSA indexer's keys): one vector per `ratio`
  tokens, `page_size // ratio` slots per page, addressed through `page_table`.
* Compressor rings: for each request slot, the projected `(kv, score)` rows of the last
  `S` tokens (S = 2m for CSA, m for HCA), indexed by `position % S`. They carry the
  still-open window (and for CSA the previous window) across forward calls, so chunked
  prefill and decode resume anywhere.
* CSA overlap snapshots: when a page closes, the Ca half of the rows of its last `m`
  tokens is copied into the page's snapshot. Resuming a request at a page boundary
  (a prefix hit) needs exactly that, plus the pages' entries and the last window's SWA.
  A match can only end on a page whose SWA KV is resident (the radix cache never ends one
  on a tombstoned window), so the snapshot lives with that SWA page, in the sliding-window
  pool, and the compressed pool holds entries only. `snapshot_home` (host) maps a
  compressed page to the SWA page its snapshot was written to. Snapshots stay fp32 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import CSA, SWA, ModelConfig


@dataclass(frozen=True)
class CacheShape:
    page_size: int
    num_pages: int  # pages of compressed entries and overlap snapshots
    num_swa_pages: int  # pages of sliding-window KV
    max_requests: int  # compressor ring slots (one per running request)
    max_draft_tokens: int = 0  # speculative drafts verified per step (sizes the compressor rings)

    def ring_rows(self, window: int) -> int:
        """Ring rows of a compressor that pools `window` rows: a verify step writes up to
        `max_draft_tokens` positions past the last committed one, and the next window still
        needs the `window` rows before it, so the ring holds `window + K - 1` rows."""
        return window + max(self.max_draft_tokens - 1, 0)


class CompressorStore:
    """Entries, ring and (CSA) overlap snapshots of one compressor of one layer."""

    def __init__(self, ratio: int, dim: int, overlap: bool, shape: CacheShape,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.ratio = ratio
        self.dim = dim
        self.overlap = overlap
        width = 2 * dim if overlap else dim
        self.window = 2 * ratio if overlap else ratio  # rows pooled into one entry
        self.ring_size = shape.ring_rows(self.window)
        self.entries = torch.zeros(shape.num_pages * (shape.page_size // ratio), dim, dtype=dtype, device=device)
        # [slot, position % S, (kv, score), width]
        self.ring = torch.zeros(shape.max_requests, self.ring_size, 2, width, dtype=torch.float32, device=device)
        # [swa page, m, (kv, score), dim]
        self.snapshots = (torch.zeros(shape.num_swa_pages, ratio, 2, dim, dtype=torch.float32, device=device)
                          if overlap else None)
        self.snapshot_home = np.full(shape.num_pages, -1, dtype=np.int64)

    def nbytes_per_page(self, page_size: int) -> int:
        return (page_size // self.ratio) * self.entries.shape[1] * self.entries.element_size()

    def nbytes_per_swa_page(self) -> int:
        return 0 if self.snapshots is None else self.snapshots[0].numel() * self.snapshots.element_size()

    def restore(self, req_slot: int, page: int, boundary: int) -> None:
        """Load the Ca half of tokens `boundary-m .. boundary-1` from compressed page `page`'s snapshot."""
        if self.snapshots is None:
            return
        home = int(self.snapshot_home[page])
        if home < 0:
            raise ValueError(f"page {page} has no overlap snapshot (it never closed)")
        m = self.ratio
        rows = torch.arange(boundary - m, boundary, device=self.ring.device) % self.ring_size
        self.ring[req_slot, rows, :, : self.dim] = self.snapshots[home]


class LayerCache:
    def __init__(self, cfg: ModelConfig, layer: int, shape: CacheShape,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.kind = cfg.layer_kind(layer)
        self.ratio = cfg.ratio_of(layer)
        self.swa = torch.zeros(shape.num_swa_pages * shape.page_size, cfg.head_dim, dtype=dtype, device=device)
        self.compressor: CompressorStore | None = None
        self.indexer: CompressorStore | None = None
        if self.kind != SWA:
            overlap = self.kind == CSA
            self.compressor = CompressorStore(self.ratio, cfg.head_dim, overlap, shape, dtype, device)
            if overlap:
                self.indexer = CompressorStore(self.ratio, cfg.index_head_dim, True, shape, dtype, device)

    def stores(self) -> list[CompressorStore]:
        return [s for s in (self.compressor, self.indexer) if s is not None]


class V4KVCache:
    def __init__(self, cfg: ModelConfig, shape: CacheShape, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        if shape.page_size % cfg.min_page_size:
            raise ValueError(f"page_size {shape.page_size} must be a multiple of {cfg.min_page_size} "
                             f"(every compression ratio of the model)")
        self.cfg = cfg
        self.shape = shape
        device = torch.device(device)
        self.layers = [LayerCache(cfg, i, shape, dtype, device) for i in range(cfg.num_layers)]

    @property
    def page_size(self) -> int:
        return self.shape.page_size

    def restore_compressor_state(self, req_slot: int, page: int, boundary: int) -> None:
        """Prepare request slot `req_slot` to resume at token `boundary` (a page boundary)
        whose last complete page is the physical page `page`."""
        if boundary % self.page_size:
            raise ValueError(f"resume point {boundary} is not a page boundary (page size {self.page_size})")
        for layer in self.layers:
            for store in layer.stores():
                store.restore(req_slot, page, boundary)

    # ---- accounting (used to size pools from a memory budget) ----------------------------
    def bytes_per_page(self) -> int:
        return sum(s.nbytes_per_page(self.page_size) for layer in self.layers for s in layer.stores())

    def bytes_per_swa_page(self) -> int:
        """Sliding-window KV plus the CSA overlap snapshots that live with it."""
        return sum(layer.swa.element_size() * layer.swa.shape[1] * self.page_size
                   + sum(s.nbytes_per_swa_page() for s in layer.stores()) for layer in self.layers)

    def bytes_per_request_slot(self) -> int:
        return sum(s.ring[0].numel() * s.ring.element_size() for layer in self.layers for s in layer.stores())
