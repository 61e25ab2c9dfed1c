"""How much memory a V4 model needs: weight bytes per weight format, KV bytes per cached token.

Everything is read off the real classes built on the meta device (nothing is allocated):
the network `DeepseekV4` (dense, or with `to_native`'s stored-format linears) for the
weights, `V4KVCache`'s own accounting for the KV state.

Weight formats:

* `checkpoint`: the official checkpoint's tensors as stored (FP8 linears + E8M0 scales,
  FP4 routed experts, bf16/fp32/int64 for the rest); configs without a quantization
  config (the tiny preset) are counted as the official layout would store them;
* `native_bf16`: resident with `load_model(..., dtype=bfloat16, weight_format="native")`;
* `dequant_bf16`, `dequant_fp32`: resident with every weight dense (`weight_format="dequant"`).
"""

from __future__ import annotations

import torch

from .checkpoint_names import expert_format, is_stacked_expert, stored_format
from .config import ModelConfig
from .kv_cache import CacheShape, V4KVCache
from .linear import QUANTIZED, to_native
from .network import DeepseekV4
from .parallel import Parallel, ParallelConfig

_STORED_BYTES = {"bf16": 2, "fp32": 4, "int64": 8}
KV_COLUMNS = {"bf16": (torch.bfloat16, "auto"), "fp8_e4m3": (torch.bfloat16, "fp8_e4m3"),
              "fp32": (torch.float32, "auto")}  # label -> (model dtype, kv_cache_dtype)
GIB = 1 << 30


def native_formats(cfg: ModelConfig, mtp: bool = False, parallel: ParallelConfig = ParallelConfig()
                   ) -> dict[str, tuple[str, torch.dtype]]:
    """Module path -> (format, scale dtype) of what the official checkpoint quantises."""
    with torch.device("meta"):
        names = DeepseekV4(cfg, mtp=mtp, parallel=Parallel(parallel)).state_dict().keys()
    out = {}
    for name in names:
        fmt = stored_format(name, cfg)
        if fmt in QUANTIZED:
            out[name.removesuffix(".weight")] = (fmt, torch.float8_e8m0fnu)
    return out


def _meta_state(cfg: ModelConfig, dtype: torch.dtype, formats: dict[str, tuple[str, torch.dtype]] | None = None,
                mtp: bool = False, parallel: ParallelConfig = ParallelConfig()) -> dict[str, torch.Tensor]:
    """The state of rank `parallel.rank`'s shard (the whole model at world size 1)."""
    with torch.device("meta"):
        model = DeepseekV4(cfg, dtype=dtype, mtp=mtp, parallel=Parallel(parallel))
    to_native(model, formats or {})
    return model.state_dict()


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".scale")) else name


def weight_bytes(cfg: ModelConfig, mtp: bool = False, parallel: ParallelConfig = ParallelConfig()
                 ) -> dict[str, dict[str, int]]:
    """Per weight format: `total` bytes and the `routed_experts` part (`mtp`: with the MTP layer),
    of one rank's shard under `parallel` (every rank's shard is the same size)."""
    formats = native_formats(cfg, mtp, parallel)
    out = {}
    native = _meta_state(cfg, torch.bfloat16, formats, mtp, parallel)
    checkpoint = {name: t.numel() * (t.element_size() if _module_of(name) in formats
                                     else _STORED_BYTES[stored_format(name, cfg)])
                  for name, t in native.items()}
    out["checkpoint"] = checkpoint
    out["native_bf16"] = {name: t.numel() * t.element_size() for name, t in native.items()}
    for label, dtype in (("dequant_bf16", torch.bfloat16), ("dequant_fp32", torch.float32)):
        state = _meta_state(cfg, dtype, mtp=mtp, parallel=parallel)
        out[label] = {name: t.numel() * t.element_size() for name, t in state.items()}
    return {label: {"total": sum(sizes.values()),
                    "routed_experts": sum(n for name, n in sizes.items() if is_stacked_expert(name))}
            for label, sizes in out.items()}


def kv_bytes(cfg: ModelConfig, dtype: torch.dtype, page_size: int | None = None,
             kv_cache_dtype: str = "auto") -> dict[str, float]:
    """KV state per cached token and per running request, from `V4KVCache`'s accounting
    (`dtype`: the model's; `kv_cache_dtype`: how the pools store rows, see `model.kv_cache`).

    `compressed_per_token`: CSA/HCA entries and CSA indexer keys (kept for every cached token);
    `swa_per_token`: sliding-window KV and the CSA overlap snapshots kept with it (only a
    request's last window of it stays resident); `ring_per_request`: the compressor rings of
    one running request."""
    page = page_size or cfg.min_page_size
    cache = V4KVCache(cfg, CacheShape(page, 1, 1, 1), dtype=dtype, device="meta", kv_cache_dtype=kv_cache_dtype)
    compressed = cache.bytes_per_page() / page
    return {"page_size": page, "compressed_per_token": compressed,
            "swa_per_token": cache.bytes_per_swa_page() / page,
            "ring_per_request": cache.bytes_per_request_slot(),
            "compressed_gib_per_million_tokens": compressed * 1e6 / GIB}


def footprint(cfg: ModelConfig, parallel: ParallelConfig = ParallelConfig()) -> dict:
    """The whole report for one config; with `parallel`, per rank: the weights of one rank's
    shard (`params` stays the whole model's) and its KV, which tensor and expert parallelism
    replicate on every rank (one shared K=V head, replicated compressors and indexer)."""
    params = sum(t.numel() for t in _meta_state(cfg, torch.float32).values())
    out = {"params": params, "expert_format": expert_format(cfg), "weights": weight_bytes(cfg, parallel=parallel),
           "kv": {label: kv_bytes(cfg, dtype, kv_cache_dtype=kv) for label, (dtype, kv) in KV_COLUMNS.items()}}
    if parallel.world_size > 1:
        out["parallel"] = {"tp": parallel.tp, "ep": parallel.ep, "ranks": parallel.world_size}
    return out


def resident_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer a loaded model holds."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def allocated_kv_bytes(cache: V4KVCache) -> dict[str, float]:
    """Per cached token, from the allocated pools: `compressed_per_token` (kept for every
    cached token) and `swa_per_token` (a request's last window, and prefix-cache resume points)."""
    page = cache.page_size
    return {"kv_cache_dtype": cache.kv_cache_dtype, "compressed_per_token": cache.bytes_per_page() / page,
            "swa_per_token": cache.bytes_per_swa_page() / page, "ring_per_request": cache.bytes_per_request_slot()}


def startup_facts(model: torch.nn.Module, cache: V4KVCache) -> dict[str, float]:
    """What the scheduler process logs at start-up and `/server_info` reports."""
    return {"weight_bytes": resident_weight_bytes(model), **allocated_kv_bytes(cache)}
