"""Fixed-capacity allocators over the model's paged state (`banyan.model.kv_cache`).

Three free lists: compressed pages (CSA/HCA entries, indexer keys, overlap snapshots),
sliding-window pages (one KV vector per token), and request slots (compressor rings).
The storage itself belongs to the model runner, built from the same `PoolSizes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.config import ModelConfig
from ..model.drafters import MTPDrafter
from ..model.kv_cache import CacheShape, V4KVCache


class OutOfMemory(RuntimeError):
    """A pool has fewer free entries than asked for."""


class FreeList:
    def __init__(self, capacity: int, name: str) -> None:
        self.capacity = capacity
        self.name = name
        self._free = list(range(capacity - 1, -1, -1))

    @property
    def available(self) -> int:
        return len(self._free)

    def alloc(self, n: int = 1) -> list[int]:
        if n > len(self._free):
            raise OutOfMemory(f"{self.name}: asked for {n}, {len(self._free)} free")
        out = self._free[-n:][::-1] if n else []
        del self._free[len(self._free) - n:]
        return out

    def free(self, ids: list[int]) -> None:
        self._free.extend(ids)

    def free_ids(self) -> list[int]:
        """The free ids (a copy), for integrity checks."""
        return list(self._free)


@dataclass(frozen=True)
class PoolSizes:
    page_size: int
    num_pages: int
    num_swa_pages: int
    max_requests: int

    @property
    def max_tokens(self) -> int:
        return self.num_pages * self.page_size

    def cache_shape(self, max_draft_tokens: int = 0) -> CacheShape:
        """The shape of the model storage these pools allocate from."""
        return CacheShape(self.page_size, self.num_pages, self.num_swa_pages, self.max_requests, max_draft_tokens)


def min_swa_pages(cfg: ModelConfig, page_size: int, max_requests: int, chunk_tokens: int,
                  draft_tokens: int = 0) -> int:
    """Sliding-window pages the scheduler needs to make progress: every running request's
    window (and speculative lookahead) plus one prefill chunk."""
    window = -(-(cfg.sliding_window + draft_tokens) // page_size) + 1
    return max_requests * window + -(-chunk_tokens // page_size)


def sizes_from_budget(cfg: ModelConfig, budget_bytes: int, page_size: int, max_requests: int,
                      dtype: torch.dtype, swa_fraction: float = 1.0, chunk_tokens: int = 512,
                      draft_tokens: int = 0,
                      kv_cache_dtype: str = "auto") -> PoolSizes:
    """Split a byte budget into compressed pages and sliding-window pages of the pools that
    `kv_cache_dtype` allocates.

    Old pages only need their sliding-window KV as resume points of the prefix cache, so the
    SWA pool may be a fraction of the page pool (interior windows are tombstoned under
    pressure); for V4-Flash the SWA part of a page is ~4x its compressed part, so a small
    fraction multiplies the token capacity. With `draft_tokens` (MTP speculation) the rings are
    `window + K - 1` rows and the drafter's window KV and page boundary streams are counted too."""
    if not 0 < swa_fraction <= 1:
        raise ValueError(f"swa_fraction must be in (0, 1], got {swa_fraction}")
    probe = V4KVCache(cfg, CacheShape(page_size, 1, 1, 1, draft_tokens), dtype=dtype, device="meta",
                      kv_cache_dtype=kv_cache_dtype)
    ring_bytes = probe.bytes_per_request_slot() * max_requests
    floor_swa = min_swa_pages(cfg, page_size, max_requests, chunk_tokens, draft_tokens)
    page_bytes, swa_bytes = probe.bytes_per_page(), probe.bytes_per_swa_page()
    if draft_tokens:
        mtp_page, mtp_swa = MTPDrafter.bytes_per_page(cfg, page_size, dtype)
        page_bytes, swa_bytes = page_bytes + mtp_page, swa_bytes + mtp_swa
    pages = int((budget_bytes - ring_bytes) // (page_bytes + swa_fraction * swa_bytes))
    swa_pages = int(pages * swa_fraction)
    if swa_pages < floor_swa:  # the floor binds: give it its bytes first
        swa_pages = floor_swa
        pages = int((budget_bytes - ring_bytes - swa_pages * swa_bytes) // page_bytes)
    min_pages = -(-cfg.sliding_window // page_size) + 2
    if pages < min_pages:
        raise ValueError(f"memory budget of {budget_bytes} bytes holds {max(pages, 0)} pages of {page_size} "
                         f"tokens; at least {min_pages} are needed")
    return PoolSizes(page_size, pages, min(swa_pages, pages), max_requests)


class MemoryPools:
    def __init__(self, sizes: PoolSizes) -> None:
        self.sizes = sizes
        self.pages = FreeList(sizes.num_pages, "page pool")
        self.swa_pages = FreeList(sizes.num_swa_pages, "sliding-window pool")
        self.slots = FreeList(sizes.max_requests, "request slots")

    @property
    def page_size(self) -> int:
        return self.sizes.page_size

    def usage(self) -> dict[str, int]:
        return {
            "pages_total": self.pages.capacity, "pages_free": self.pages.available,
            "swa_pages_total": self.swa_pages.capacity, "swa_pages_free": self.swa_pages.available,
            "slots_total": self.slots.capacity, "slots_free": self.slots.available,
            "token_capacity": self.sizes.max_tokens,
        }

    def is_full(self) -> bool:
        """Every page, SWA page and slot is free."""
        return (self.pages.available == self.pages.capacity and self.swa_pages.available == self.swa_pages.capacity
                and self.slots.available == self.slots.capacity)
