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

KV dtypes (`kv_cache_dtype`, SGLang's and vLLM's flag name): `auto` stores SWA KV,
compressed entries and indexer keys as float rows in the model's dtype, `bfloat16` as bf16
rows, `fp8_e4m3` in the official FP8 layouts (`kernels.kv_formats`): SWA and compressed KV as
`FP8KVCache` rows (448 e4m3 dims with a power-of-two scale per 64, 64 bf16 RoPE dims, 584 B
for V4), indexer keys as `FP8IndexerKeys` (e4m3 with one power-of-two scale per key). The
rings and snapshots stay fp32 in every KV dtype: they hold `score = gate + ape`, which no
narrower type holds exactly, and a resume must see the rows a run without the cache saw.
`qdq=True` (float pools only) applies the same FP8 rounding on insert: the float reference
of the FP8 cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..kernels.kv_formats import FP8IndexerKeys, FP8KVCache, KVRowFormat, Pool, index_key_qdq, row_bytes
from .config import CSA, SWA, ModelConfig

KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8_e4m3")
FP8_BLOCK_ROWS = 64  # rows per block of an FP8 KV pool: 64 x 584 B pads to 585 B a row


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


@dataclass(frozen=True)
class KVFormat:
    """How a cache stores its KV rows: float rows of `dtype` (optionally through the FP8 QDQ
    on insert), or the FP8 layouts."""

    dtype: torch.dtype = torch.float32
    fp8: bool = False
    qdq: bool = False

    @classmethod
    def of(cls, kv_cache_dtype: str, model_dtype: torch.dtype, qdq: bool = False) -> "KVFormat":
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        fp8 = kv_cache_dtype == "fp8_e4m3"
        if fp8 and qdq:
            raise ValueError("qdq applies to float pools; an fp8_e4m3 pool always quantises")
        return cls(torch.bfloat16 if kv_cache_dtype == "bfloat16" else model_dtype, fp8, qdq)

    def kv_pool(self, rows: int, dim: int, rope_dim: int, device: torch.device) -> Pool:
        """A pool of KV rows (SWA KV, compressed entries); FP8 rows sit in blocks of
        `FP8_BLOCK_ROWS`, whatever the entries per page (an HCA page has one: alone in its
        block it would pad 584 B to 1,152)."""
        if self.fp8:
            return FP8KVCache.empty(rows, FP8_BLOCK_ROWS, KVRowFormat(dim, rope_dim), device=device)
        return torch.zeros(rows, dim, dtype=self.dtype, device=device)

    def key_pool(self, rows: int, page_rows: int, dim: int, device: torch.device) -> Pool:
        """A pool of indexer keys."""
        if self.fp8:
            return FP8IndexerKeys.empty(rows, page_rows, dim, device=device)
        return torch.zeros(rows, dim, dtype=self.dtype, device=device)


class CompressorStore:
    """Entries, ring and (CSA) overlap snapshots of one compressor of one layer. `keys`: the
    entries are indexer keys (else KV rows with `rope_dim` RoPE dims)."""

    def __init__(self, ratio: int, dim: int, overlap: bool, shape: CacheShape, fmt: KVFormat,
                 device: torch.device, rope_dim: int, keys: bool = False) -> None:
        self.ratio = ratio
        self.dim = dim
        self.overlap = overlap
        width = 2 * dim if overlap else dim
        self.window = 2 * ratio if overlap else ratio  # rows pooled into one entry
        self.ring_size = shape.ring_rows(self.window)
        rows, per_page = shape.num_pages * (shape.page_size // ratio), shape.page_size // ratio
        self.entries = (fmt.key_pool(rows, per_page, dim, device) if keys
                        else fmt.kv_pool(rows, dim, rope_dim, device))
        self.qdq = fmt.qdq and not keys  # the KV rows' QDQ, applied by the insert op
        self.qdq_keys = fmt.qdq and keys  # the indexer keys' QDQ (`simulate_fp8_keys`)
        # [slot, position % S, (kv, score), width]
        self.ring = torch.zeros(shape.max_requests, self.ring_size, 2, width, dtype=torch.float32, device=device)
        # [swa page, m, (kv, score), dim]
        self.snapshots = (torch.zeros(shape.num_swa_pages, ratio, 2, dim, dtype=torch.float32, device=device)
                          if overlap else None)
        self.snapshot_home = np.full(shape.num_pages, -1, dtype=np.int64)

    def nbytes_per_page(self, page_size: int) -> float:
        return (page_size // self.ratio) * row_bytes(self.entries)

    def simulate_fp8_keys(self, slots: torch.Tensor) -> None:
        """Float keys of a `qdq` cache: round the entries just written at `slots` as FP8 keys store them."""
        if self.qdq_keys:
            self.entries.index_copy_(0, slots, index_key_qdq(self.entries.index_select(0, slots)))

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
                 dtype: torch.dtype, device: torch.device, fmt: KVFormat | None = None) -> None:
        """`fmt`: how KV rows are stored (default: float rows of `dtype`)."""
        fmt = fmt or KVFormat(dtype)
        self.kind = cfg.layer_kind(layer)
        self.ratio = cfg.ratio_of(layer)
        self.qdq = fmt.qdq
        rd = cfg.rope_head_dim
        self.swa = fmt.kv_pool(shape.num_swa_pages * shape.page_size, cfg.head_dim, rd, device)
        self.compressor: CompressorStore | None = None
        self.indexer: CompressorStore | None = None
        if self.kind != SWA:
            overlap = self.kind == CSA
            self.compressor = CompressorStore(self.ratio, cfg.head_dim, overlap, shape, fmt, device, rd)
            if overlap:
                self.indexer = CompressorStore(self.ratio, cfg.index_head_dim, True, shape, fmt, device, rd,
                                               keys=True)

    def stores(self) -> list[CompressorStore]:
        return [s for s in (self.compressor, self.indexer) if s is not None]


class V4KVCache:
    def __init__(self, cfg: ModelConfig, shape: CacheShape, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", kv_cache_dtype: str = "auto", qdq: bool = False) -> None:
        """`dtype`: the model's dtype (rows of `auto` pools); `kv_cache_dtype`: see the module
        docstring; `qdq`: float pools that round their rows as the FP8 pools store them."""
        if shape.page_size % cfg.min_page_size:
            raise ValueError(f"page_size {shape.page_size} must be a multiple of {cfg.min_page_size} "
                             f"(every compression ratio of the model)")
        self.cfg = cfg
        self.shape = shape
        self.kv_cache_dtype = kv_cache_dtype
        self.fmt = KVFormat.of(kv_cache_dtype, dtype, qdq)
        device = torch.device(device)
        self.layers = [LayerCache(cfg, i, shape, dtype, device, self.fmt) for i in range(cfg.num_layers)]

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
    def bytes_per_page(self) -> float:
        return sum(s.nbytes_per_page(self.page_size) for layer in self.layers for s in layer.stores())

    def bytes_per_swa_page(self) -> float:
        """Sliding-window KV plus the CSA overlap snapshots that live with it."""
        return sum(row_bytes(layer.swa) * self.page_size
                   + sum(s.nbytes_per_swa_page() for s in layer.stores()) for layer in self.layers)

    def bytes_per_request_slot(self) -> int:
        return sum(s.ring[0].numel() * s.ring.element_size() for layer in self.layers for s in layer.stores())
