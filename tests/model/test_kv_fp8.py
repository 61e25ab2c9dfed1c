"""The FP8 KV cache (`kv_cache_dtype="fp8_e4m3"`): the official layouts in the pools, the same
numerics as float pools with the same rounding, cache transparency, and the Flash footprint."""

from __future__ import annotations

import pytest
import torch

from banyan.kernels.kv_formats import FP8IndexerKeys, FP8KVCache, pool_nbytes
from banyan.model.config import ModelConfig
from banyan.model.generate import SimpleSession
from banyan.model.kv_cache import CacheShape, V4KVCache
from banyan.model.runner import ModelRunner
from banyan.runtime.options import EngineOptions
from banyan.scheduler.pools import MemoryPools, PoolSizes
from banyan.scheduler.scheduler import Scheduler
from banyan.tests.conftest import random_prompt
from banyan.tests.scheduler.test_scheduler import P, run_all, shared_prefix_prompts


def _logits(model, ids: list[int], split: int, **cache_kwargs) -> torch.Tensor:
    """Every token's logits: `ids[:split]` prefilled in chunks that cross pages, the rest decoded
    one at a time, on a cache built with `cache_kwargs`."""
    session = SimpleSession(model, max_tokens=len(ids), max_requests=1)
    session.cache = V4KVCache(model.cfg, session.cache.shape, dtype=model.dtype, **cache_kwargs)
    prefill = session.prefill(0, ids[:split], chunk_size=100, all_logits=True)
    return torch.cat([prefill, torch.stack([session.extend({0: [t]})[0] for t in ids[split:]])])


def test_fp8_pools_hold_the_official_layouts():
    cfg = ModelConfig.preset("flash")
    cache = V4KVCache(cfg, CacheShape(128, 4, 4, 1), dtype=torch.bfloat16, device="meta", kv_cache_dtype="fp8_e4m3")
    csa = next(layer for layer in cache.layers if layer.indexer is not None)
    assert isinstance(csa.swa, FP8KVCache) and isinstance(csa.compressor.entries, FP8KVCache)
    assert isinstance(csa.indexer.entries, FP8IndexerKeys) and csa.indexer.entries.dim == 128
    fmt = csa.swa.fmt
    assert fmt.data_bytes + fmt.scale_bytes == 584
    assert csa.indexer.entries.data.shape[1] == 32 * (128 + 4)  # a page's 32 keys: 132 B each
    assert csa.compressor.ring.dtype == torch.float32  # rings and snapshots stay exact
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        V4KVCache(cfg, CacheShape(128, 1, 1, 1), device="meta", kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, bfloat16, fp8_e4m3"):
        EngineOptions(kv_cache_dtype="fp8").validate()


def test_fp8_kv_run_equals_float_pools_with_the_same_qdq(tiny_model):
    """Prefill across pages, then decode: an FP8 cache and fp32 pools that apply the same
    rounding on insert (KV rows and indexer keys) give the same logits; without the rounding
    they differ (the test can tell)."""
    ids = random_prompt(300, seed=11)
    fp8 = _logits(tiny_model, ids, 290, kv_cache_dtype="fp8_e4m3")
    qdq = _logits(tiny_model, ids, 290, qdq=True)
    assert (fp8 - qdq).abs().max() <= 1e-5
    assert (fp8 - _logits(tiny_model, ids, 290)).abs().max() > 1e-2


def _scheduler(model, cache: bool, pages: int = 40, slots: int = 8) -> Scheduler:
    sizes = PoolSizes(P, pages, pages, slots)
    runner = ModelRunner(model, sizes.cache_shape(), kv_cache_dtype="fp8_e4m3")
    return Scheduler(runner, MemoryPools(sizes), chunked_prefill_size=256, enable_prefix_cache=cache,
                     check_integrity=True)


def test_cache_is_transparent_with_fp8_kv(tiny_model):
    """Cache off vs on with prefix hits at every page boundary of a shared prefix: the same
    greedy tokens, and every pool free again after a flush. Logprobs agree to 1e-3, not the
    float path's 1e-4: batches of other shapes move fp32 KV values by ~1e-7, and now and then
    that moves a value across an e4m3 rounding boundary (a step of up to 2^-4 of the value)."""
    prompts = {rid: ids for rid, ids in shared_prefix_prompts().items() if rid in ("r0", "r1", "r2", "r4")}
    cold = run_all(_scheduler(tiny_model, cache=False), prompts)
    warm_sched = _scheduler(tiny_model, cache=True)
    assert isinstance(warm_sched.runner.kv.layers[0].swa, FP8KVCache)
    run_all(warm_sched, {"warmup": random_prompt(3 * P + 50, seed=100)}, max_new=1)
    warm = run_all(warm_sched, prompts)
    for rid in prompts:
        assert warm[rid].output_ids == cold[rid].output_ids, rid
        assert max(abs(x - y) for x, y in zip(warm[rid].output_logprobs, cold[rid].output_logprobs)) <= 1e-3, rid
    assert sorted(r.cached_tokens for r in warm.values()) == [P, P, 2 * P, 3 * P]  # hits at every boundary
    assert warm_sched.flush_cache() and warm_sched.pools.is_full()


@pytest.mark.parametrize("kv_cache_dtype, limit", [("auto", 6880), ("fp8_e4m3", 4200)])
def test_flash_pool_bytes_per_cached_token(kv_cache_dtype, limit):
    """Issue 12's targets, from the allocated pools (meta tensors: shapes, no memory) of a Flash
    cache with bf16 weights: compressed entries and indexer keys per cached token."""
    cfg, pages = ModelConfig.preset("flash"), 64
    cache = V4KVCache(cfg, CacheShape(128, pages, 8, 1), dtype=torch.bfloat16, device="meta",
                      kv_cache_dtype=kv_cache_dtype)
    allocated = sum(pool_nbytes(s.entries) for layer in cache.layers for s in layer.stores())
    per_token = allocated / (pages * 128)
    assert per_token <= limit
    assert per_token == pytest.approx(cache.bytes_per_page() / 128)  # what pool sizing counts


def test_engine_serves_with_fp8_kv_and_reports_its_bytes(tiny_official, tiny_model):
    """`kv_cache_dtype` reaches the scheduler process: the engine's greedy tokens are an FP8-cache
    session's, and the start-up footprint counts the FP8 pools."""
    from banyan.benchmarks.kv_agreement import greedy
    from banyan.runtime.engine import Engine

    ids = random_prompt(150, seed=12)
    eng = Engine(tiny_official, max_running_requests=2, kv_cache_bytes=24 << 20, kv_cache_dtype="fp8_e4m3")
    try:
        out = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0})
        facts = eng.info["footprint"]
    finally:
        eng.shutdown()
    assert out["output_ids"] == greedy(tiny_model, ids, 8, "fp8_e4m3")
    expected = V4KVCache(tiny_model.cfg, CacheShape(P, 1, 1, 1), device="meta", kv_cache_dtype="fp8_e4m3")
    assert facts["kv_cache_dtype"] == "fp8_e4m3"
    assert facts["compressed_per_token"] == expected.bytes_per_page() / P
    assert facts["swa_per_token"] == expected.bytes_per_swa_page() / P
