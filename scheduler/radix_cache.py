"""A radix prefix cache for V4's compressed KV, at page granularity.

Each node is one full page of `P` tokens, keyed by those token ids under its parent. It
owns the page's compressed entries and CSA overlap snapshot (a compressed page id) and
its sliding-window KV (an SWA page id, or None once tombstoned). Resuming at the end of a
node needs the compressed pages of the whole path plus the SWA of the pages covering the
last `sliding_window - 1` tokens, so a match may end only where those are resident.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

_clock = itertools.count()


@dataclass(eq=False)
class Node:
    key: tuple[int, ...] = ()
    page: int = -1
    swa_page: int | None = None
    parent: "Node | None" = None
    children: dict[tuple[int, ...], "Node"] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0
    depth: int = 0  # pages from the root

    def touch(self) -> None:
        self.last_access = next(_clock)


@dataclass
class Match:
    nodes: list[Node]  # root-to-leaf path, usable for resumption

    @property
    def pages(self) -> list[int]:
        return [n.page for n in self.nodes]

    @property
    def swa_pages(self) -> list[int | None]:
        return [n.swa_page for n in self.nodes]

    @property
    def last(self) -> Node | None:
        return self.nodes[-1] if self.nodes else None


class RadixCache:
    def __init__(self, page_size: int, sliding_window: int, free_pages, free_swa_pages) -> None:
        """`free_pages` / `free_swa_pages` are callables returning ids to their pools."""
        self.page_size = page_size
        self.swa_pages_needed = -(-(sliding_window - 1) // page_size)
        self.root = Node()
        self._free_pages = free_pages
        self._free_swa_pages = free_swa_pages
        self.num_nodes = 0

    # ---- lookup ---------------------------------------------------------------------------
    def match_prefix(self, tokens: list[int], max_pages: int | None = None) -> Match:
        """The longest cached page-aligned prefix of `tokens` that can be resumed from."""
        p = self.page_size
        limit = len(tokens) // p if max_pages is None else min(max_pages, len(tokens) // p)
        path: list[Node] = []
        node = self.root
        for i in range(limit):
            child = node.children.get(tuple(tokens[i * p:(i + 1) * p]))
            if child is None:
                break
            path.append(child)
            node = child
        # cut back to the deepest node whose last window is resident
        while path and not all(n.swa_page is not None for n in path[-self.swa_pages_needed:]):
            path.pop()
        for n in path:
            n.touch()
        return Match(path)

    # ---- insertion --------------------------------------------------------------------------
    def insert_page(self, parent: Node, key: tuple[int, ...], page: int, swa_page: int
                    ) -> tuple[Node, bool, bool]:
        """Add one full page under `parent`. Returns (node, took_page, took_swa): which of
        the caller's ids the tree now owns. When the page is cached already, the caller
        keeps its own copies (and frees them when done)."""
        existing = parent.children.get(key)
        if existing is None:
            node = Node(key=key, page=page, swa_page=swa_page, parent=parent, depth=parent.depth + 1)
            node.touch()
            parent.children[key] = node
            self.num_nodes += 1
            return node, True, True
        existing.touch()
        if existing.swa_page is None:  # revive a tombstoned window with the caller's copy
            existing.swa_page = swa_page
            return existing, False, True
        return existing, False, False

    # ---- locking ------------------------------------------------------------------------------
    def lock(self, node: Node | None) -> None:
        while node is not None and node is not self.root:
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node | None) -> None:
        while node is not None and node is not self.root:
            node.lock_ref -= 1
            assert node.lock_ref >= 0, "radix cache lock underflow"
            node = node.parent

    # ---- eviction -----------------------------------------------------------------------------
    def nodes(self):
        """Every node below the root."""
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def evictable_pages(self) -> int:
        return sum(1 for n in self.nodes() if n.lock_ref == 0)

    def evict(self, num_pages: int) -> int:
        """Free up to `num_pages` pages from unlocked leaves, least recently used first."""
        heap = [(n.last_access, id(n), n) for n in self.nodes() if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_pages:
            _, _, node = heapq.heappop(heap)
            self._remove(node)
            freed += 1
            parent = node.parent
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed

    def tombstone_swa(self, num_pages: int, protected: frozenset[Node] | set[Node] = frozenset()) -> int:
        """Drop the sliding-window KV of up to `num_pages` interior pages, least recently used
        first. `protected` are the pages inside a running request's window; every other
        interior page may go, locked or not: it only loses its value as a resume point."""
        candidates = sorted((n for n in self.nodes() if n.children and n.swa_page is not None
                             and n not in protected), key=lambda n: n.last_access)
        freed = []
        for node in candidates[:num_pages]:
            freed.append(node.swa_page)
            node.swa_page = None
        self._free_swa_pages(freed)
        return len(freed)

    def _remove(self, node: Node) -> None:
        del node.parent.children[node.key]
        self._free_pages([node.page])
        if node.swa_page is not None:
            self._free_swa_pages([node.swa_page])
        self.num_nodes -= 1

    def flush(self) -> int:
        """Remove every unlocked node; returns how many remain (locked by running requests)."""
        while self.evict(self.num_nodes + 1):
            pass
        return self.num_nodes


class NoPrefixCache:
    """The prefix cache when caching is off: nothing matches and nothing is kept, so every
    page stays with the request that allocated it and is freed when the request ends."""

    def __init__(self) -> None:
        self.root = Node()
        self.num_nodes = 0

    def match_prefix(self, tokens: list[int], max_pages: int | None = None) -> Match:
        return Match([])

    def insert_page(self, parent: Node, key: tuple[int, ...], page: int, swa_page: int
                    ) -> tuple[Node, bool, bool]:
        return parent, False, False

    def lock(self, node: Node | None) -> None:
        pass

    def unlock(self, node: Node | None) -> None:
        pass

    def nodes(self):
        return iter(())

    def evict(self, num_pages: int) -> int:
        return 0

    def tombstone_swa(self, num_pages: int, protected: frozenset[Node] | set[Node] = frozenset()) -> int:
        return 0

    def flush(self) -> int:
        return 0
