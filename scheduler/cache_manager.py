"""Page bookkeeping between the pools, the prefix cache and the requests that hold pages.

A request's logical page `k` has a compressed page `req.pages[k]` and a sliding-window page
`req.swa_pages[k]` (None once dropped behind its window). Each page is either in the radix
tree (shared, locked while a request uses it), owned by exactly one request (`owned_pages`),
or free. `check_integrity` verifies that partition for every pool.
"""

from __future__ import annotations

from typing import Iterable

from .pools import FreeList, MemoryPools
from .radix_cache import Match, NoPrefixCache, RadixCache
from .request import Request


class IntegrityError(AssertionError):
    """The pools, the tree and the requests disagree about who holds a page."""


class CacheManager:
    def __init__(self, pools: MemoryPools, sliding_window: int, enable_prefix_cache: bool = True) -> None:
        self.pools = pools
        self.page_size = pools.page_size
        self.sliding_window = sliding_window
        self.cache: RadixCache | NoPrefixCache = (
            RadixCache(self.page_size, sliding_window, pools.pages.free, pools.swa_pages.free)
            if enable_prefix_cache else NoPrefixCache())
        self.shares_prefixes = enable_prefix_cache
        self.evicted_pages = 0

    # ---- lookup and admission ----------------------------------------------------------------
    def match(self, req: Request) -> Match:
        """The cached prefix `req` may resume from."""
        return self.cache.match_prefix(req.seq, max_pages=self.max_reuse_pages(req))

    def max_reuse_pages(self, req: Request) -> int:
        """Pages of a cached prefix `req` may reuse: at least one token must be computed, and
        prompt positions whose logprobs were asked for (and not yet produced) must be too."""
        last = req.num_tokens - 1
        if req.wants_input_logprobs and not req.output_ids:
            last = min(last, max(req.logprob_start_len - 1, 0))
        return last // self.page_size

    def admit(self, req: Request, match: Match) -> bool:
        """Give `req` a request slot and the pages of `match`. False if no slot is free."""
        if self.pools.slots.available == 0:
            return False
        req.slot = self.pools.slots.alloc(1)[0]
        req.pages, req.swa_pages = match.pages, match.swa_pages
        req.inserted_pages = len(match.nodes)
        req.computed = req.cached_tokens = len(match.nodes) * self.page_size
        req.restore_page = req.pages[-1] if req.computed else None
        req.last_node = match.last
        self.cache.lock(match.last)
        self.drop_old_windows(req)  # cached windows behind its own are not its to keep
        return True

    def release(self, req: Request) -> None:
        """Return a request's private pages and slot; its tree pages stay cached."""
        self.cache.unlock(req.last_node)
        self.pools.pages.free(sorted(req.owned_pages))
        self.pools.swa_pages.free(sorted(req.owned_swa_pages))
        if req.slot is not None:
            self.pools.slots.free([req.slot])
        req.slot, req.last_node, req.restore_page = None, None, None
        req.pages, req.swa_pages = [], []
        req.owned_pages, req.owned_swa_pages = set(), set()
        req.swa_dropped = 0
        req.computed = req.inserted_pages = 0

    # ---- growth ------------------------------------------------------------------------------
    def pages_needed(self, req: Request, extend: int) -> int:
        return max(0, -(-(req.computed + extend) // self.page_size) - len(req.pages))

    def allocate(self, req: Request, extend: int) -> None:
        """Pages for `extend` more tokens of `req` (room must have been made)."""
        n = self.pages_needed(req, extend)
        if n:
            pages, swa = self.pools.pages.alloc(n), self.pools.swa_pages.alloc(n)
            req.pages += pages
            req.swa_pages += swa
            req.owned_pages.update(pages)
            req.owned_swa_pages.update(swa)

    def insert_full_pages(self, req: Request) -> None:
        """Hand every newly completed page of `req` to the prefix cache."""
        p = self.page_size
        parent = req.last_node or self.cache.root
        while (req.inserted_pages + 1) * p <= req.computed:
            k = req.inserted_pages
            node, took_page, took_swa = self.cache.insert_page(parent, tuple(req.tokens(k * p, (k + 1) * p)),
                                                               req.pages[k], req.swa_pages[k])
            if took_page:
                req.owned_pages.discard(req.pages[k])
            if took_swa:
                req.owned_swa_pages.discard(req.swa_pages[k])
            self.cache.lock(node)
            self.cache.unlock(req.last_node)
            req.last_node = parent = node
            req.inserted_pages += 1

    # ---- sliding windows -----------------------------------------------------------------------
    def first_live_page(self, req: Request) -> int:
        """The first page whose sliding-window KV the request's next tokens can still attend to."""
        return max(0, req.computed - self.sliding_window) // self.page_size

    def windows_in_use(self, running: Iterable[Request]) -> set:
        """Tree nodes holding sliding-window KV that a running request still attends to."""
        protected = set()
        for req in running:
            node, live = req.last_node, self.first_live_page(req)
            while node is not None and node is not self.cache.root and node.depth - 1 >= live:
                protected.add(node)
                node = node.parent
        return protected

    def drop_old_windows(self, req: Request) -> None:
        """Forget sliding-window pages behind the request's window; free the private ones.
        Pages in the radix tree keep theirs (a resume point) until memory runs short."""
        live = min(self.first_live_page(req), len(req.swa_pages))
        for k in range(req.swa_dropped, live):
            swa = req.swa_pages[k]
            if swa is not None and swa in req.owned_swa_pages:
                req.owned_swa_pages.discard(swa)
                self.pools.swa_pages.free([swa])
            req.swa_pages[k] = None
        req.swa_dropped = max(req.swa_dropped, live)

    # ---- memory pressure -------------------------------------------------------------------------
    def shortfall(self, pages: int) -> int:
        """How many compressed or SWA pages are missing for `pages` new ones (0: enough)."""
        return max(pages - self.pools.pages.available, pages - self.pools.swa_pages.available, 0)

    def free_from_cache(self, pages: int, running: Iterable[Request]) -> bool:
        """Free room for `pages` new pages from the prefix cache alone: tombstone cached windows
        no running request attends to, then evict unlocked prefixes. True if there is room."""
        while True:
            short, short_swa = pages - self.pools.pages.available, pages - self.pools.swa_pages.available
            if short <= 0 and short_swa <= 0:
                return True
            if short_swa > 0 and self.cache.tombstone_swa(short_swa, self.windows_in_use(running)):
                continue
            freed = self.cache.evict(max(short, short_swa))
            self.evicted_pages += freed
            if not freed:
                return False

    def flush(self) -> None:
        self.cache.flush()

    @property
    def cached_pages(self) -> int:
        return self.cache.num_nodes

    # ---- integrity ---------------------------------------------------------------------------------
    def check_integrity(self, holders: Iterable[Request]) -> None:
        """For every pool: tree pages + pages owned by requests + free pages == capacity, and no
        page is held twice. Every page a request references is its own or in the tree, and the
        tree's locks equal the requests' paths. Raises `IntegrityError`."""
        holders = list(holders)
        nodes = list(self.cache.nodes())
        tree_pages = [n.page for n in nodes]
        tree_swa = [n.swa_page for n in nodes if n.swa_page is not None]
        _check_pool(self.pools.pages, tree_pages, [p for r in holders for p in r.owned_pages])
        _check_pool(self.pools.swa_pages, tree_swa, [p for r in holders for p in r.owned_swa_pages])
        _check_pool(self.pools.slots, [], [r.slot for r in holders if r.slot is not None])
        tree_page_set, tree_swa_set = set(tree_pages), set(tree_swa)
        locks: dict[int, int] = {}
        for r in holders:
            for k, page in enumerate(r.pages):
                if page not in r.owned_pages and page not in tree_page_set:
                    raise IntegrityError(f"request {r.rid} references page {page} that it does not own "
                                         f"and the tree does not hold")
                swa = r.swa_pages[k] if k < len(r.swa_pages) else None
                if swa is not None and swa not in r.owned_swa_pages and swa not in tree_swa_set:
                    raise IntegrityError(f"request {r.rid} references SWA page {swa} that nobody holds")
            node = r.last_node
            while node is not None and node is not self.cache.root:
                locks[id(node)] = locks.get(id(node), 0) + 1
                node = node.parent
        for n in nodes:
            if n.lock_ref != locks.get(id(n), 0):
                raise IntegrityError(f"tree node at depth {n.depth} has lock_ref {n.lock_ref}, "
                                     f"but {locks.get(id(n), 0)} running requests use it")


def _check_pool(pool: FreeList, in_tree: list[int], owned: list[int]) -> None:
    free = pool.free_ids()
    held = in_tree + owned + free
    if len(held) != pool.capacity or len(set(held)) != len(held):
        raise IntegrityError(f"{pool.name}: {len(in_tree)} in the tree + {len(owned)} owned + {len(free)} free "
                             f"= {len(held)} ({len(set(held))} distinct), capacity {pool.capacity}")
