"""Shared-prefix workload through the Engine with the radix cache on and off, and the
KV footprint of V4's paged state against a dense per-token KV layout.

    python -m banyan.benchmarks.prefix_cache [--requests 32] [--prefix 1024] [--suffix 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..model.config import ModelConfig
from ..model.kv_cache import CacheShape, V4KVCache


def kv_footprint(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Bytes per cached token: V4 paged state vs a dense layout holding one KV vector
    (head_dim wide) per token in every layer."""
    p = cfg.min_page_size
    cache = V4KVCache(cfg, CacheShape(p, 1, 1, 1), dtype=dtype, device="meta")
    dense = cfg.num_layers * cfg.head_dim * torch.finfo(dtype).bits // 8
    compressed = cache.bytes_per_page() / p
    with_window = compressed + cache.bytes_per_swa_page() / p
    return {"dense_bytes_per_token": dense, "v4_bytes_per_token_window_tombstoned": compressed,
            "v4_bytes_per_token_window_resident": with_window,
            "dense_over_v4_tombstoned": dense / compressed, "dense_over_v4_resident": dense / with_window}


def run_workload(enable_cache: bool, requests: int, prefix: int, suffix: int, max_new: int, model_path) -> dict:
    from ..runtime.engine import Engine

    gen = torch.Generator().manual_seed(0)
    shared = torch.randint(3, 128000, (prefix,), generator=gen).tolist()
    prompts = [shared + torch.randint(3, 128000, (suffix,), generator=gen).tolist() for _ in range(requests)]
    with Engine(model_path, enable_prefix_cache=enable_cache, max_running_requests=requests,
                kv_cache_bytes=1 << 30, chunked_prefill_size=2048) as engine:
        engine.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 2})  # warm-up
        start = time.perf_counter()
        import concurrent.futures as cf
        with cf.ThreadPoolExecutor(requests) as pool:
            outs = list(pool.map(lambda ids: engine.generate(
                input_ids=ids, sampling_params={"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}),
                prompts))
        elapsed = time.perf_counter() - start
        stats = engine.stats()
    prompt_tokens = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    unique = prefix + requests * suffix
    return {"cache": enable_cache, "seconds": elapsed, "requests_per_s": requests / elapsed,
            "output_tokens_per_s": requests * max_new / elapsed, "prompt_tokens": prompt_tokens,
            "cached_tokens": cached, "cached_ratio": cached / prompt_tokens,
            "prefill_tokens_computed": stats["prefill_tokens"] - 3,
            "computed_over_unique": (stats["prefill_tokens"] - 3) / unique}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--suffix", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    on = run_workload(True, args.requests, args.prefix, args.suffix, args.max_new_tokens, args.model_path)
    off = run_workload(False, args.requests, args.prefix, args.suffix, args.max_new_tokens, args.model_path)
    result = {"workload": vars(args), "cache_on": on, "cache_off": off,
              "throughput_ratio_on_over_off": on["requests_per_s"] / off["requests_per_s"],
              "kv_footprint": {name: kv_footprint(ModelConfig.preset(name)) for name in ("tiny", "flash", "pro")}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
