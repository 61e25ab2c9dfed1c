from banyan.scheduler.pools import FreeList
from banyan.scheduler.radix_cache import RadixCache

P = 4


def build(window=5):
    pages, swa = FreeList(32, "pages"), FreeList(32, "swa")
    cache = RadixCache(P, window, pages.free, swa.free)
    return cache, pages, swa


def insert_chain(cache, pages, swa, tokens):
    parent = cache.root
    for k in range(len(tokens) // P):
        node, took, took_swa = cache.insert_page(parent, tuple(tokens[k * P:(k + 1) * P]), pages.alloc()[0],
                                                 swa.alloc()[0])
        assert took and took_swa
        parent = node
    return parent


def test_match_is_page_aligned_and_leaves_a_token():
    cache, pages, swa = build()
    toks = list(range(16))
    insert_chain(cache, pages, swa, toks)
    assert len(cache.match_prefix(toks + [99]).nodes) == 4
    assert len(cache.match_prefix(toks, max_pages=(len(toks) - 1) // P).nodes) == 3
    assert len(cache.match_prefix(toks[:6] + [77] * 10).nodes) == 1


def test_tombstoned_windows_limit_where_a_match_may_end():
    cache, pages, swa = build(window=5)  # the last ceil(4 / 4) = 1 page before a match point needs its SWA
    toks = list(range(20))
    leaf = insert_chain(cache, pages, swa, toks)
    freed = cache.tombstone_swa(10)
    assert freed == 4  # every interior page; the leaf keeps its window
    assert len(cache.match_prefix(toks + [1]).nodes) == 5  # ends at the leaf, whose window is resident
    assert len(cache.match_prefix(toks[:12] + [1]).nodes) == 0  # interior ends have no window any more
    assert leaf.swa_page is not None


def test_lru_eviction_skips_locked_paths_and_frees_pools():
    cache, pages, swa = build()
    a = insert_chain(cache, pages, swa, list(range(8)))
    b = insert_chain(cache, pages, swa, list(range(100, 108)))
    cache.lock(a)
    assert cache.evict(10) == 2  # only b's path
    assert cache.num_nodes == 2
    cache.unlock(a)
    assert cache.flush() == 0
    assert pages.available == 32 and swa.available == 32


def test_duplicate_page_stays_with_the_caller():
    cache, pages, swa = build()
    insert_chain(cache, pages, swa, list(range(4)))
    node, took, took_swa = cache.insert_page(cache.root, tuple(range(4)), 30, 31)
    assert not took and not took_swa and node.page != 30
