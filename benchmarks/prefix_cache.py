"""Shared-prefix workload through the Engine with the radix cache on and off, and the
KV footprint of V4's paged state against a dense per-token KV layout.

    python -m banyan.benchmarks.prefix_cache [--requests 32] [--prefix 1024] [--suffix 32] [--out FILE]

The workload is the offline benchmark's `shared-prefix` (`python -m banyan.benchmarks.offline`
runs it beside the transformers baseline).
"""

from __future__ import annotations

import argparse
import json

import torch

from ..model.config import ModelConfig
from ..model.kv_cache import CacheShape, V4KVCache
from .datasets import LenRange, shared_prefix_dataset
from .offline import Workload, run_banyan


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prefix", type=int, default=1024)
    ap.add_argument("--suffix", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    workload = Workload.from_sessions("shared-prefix", shared_prefix_dataset(
        args.requests, 1, args.prefix, LenRange(args.suffix, args.suffix),
        LenRange(args.max_new_tokens, args.max_new_tokens), "ids"))
    options = {"max_running_requests": args.requests, "kv_cache_bytes": 1 << 30, "chunked_prefill_size": 2048}
    on, off = (run_banyan(args.model_path, [workload], cache, options)[0][workload.name] for cache in (True, False))
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
