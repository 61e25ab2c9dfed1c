"""One entry point per hot op; the implementation is chosen per call.

Every op has a torch implementation (the references of `banyan.kernels`, which run
anywhere) and a Triton one (`banyan.kernels.triton`: CUDA tensors, or CPU tensors under
`TRITON_INTERPRET=1`). The environment variable `BANYAN_KERNELS` chooses:

    BANYAN_KERNELS=auto              (default) Triton for CUDA tensors on sm80+, torch otherwise
    BANYAN_KERNELS=torch             torch everywhere
    BANYAN_KERNELS=triton            Triton everywhere
    BANYAN_KERNELS=auto,moe=torch    a default, then per-op overrides

Ops (the override keys) and their functions:

    gemm        linear, grouped_linear      weights as stored (dense / FP8 128x128 / FP4 1x32)
    moe         fused_moe                   routed experts
                moe_layer                   gate, routing, routed and shared experts (fused)
    router      route                       sqrt-softplus scores, biased or hash top-k
    indexer     indexer_topk                lightning-indexer top-k over float or FP8 keys
                indexer_select              its queries (wq_b, RoPE, head weights), then top-k (fused)
    attention   sparse_attention            sparse attention with sinks over float or FP8 pools
                attention_output            ... then the output projections wo_a, wo_b (fused)
    mhc         hc_pre, hc_post, hc_head    hyper-connections
                hc_pre_norm, hc_head_norm   hc_pre / hc_head, then an RMS norm (fused)
    prologue    norm_rope, kv_insert        q/kv norm + RoPE (+ FP8 QDQ + paged insert)
                attention_prologue          wq_a, q_norm, wq_b, q norm + RoPE, wkv, kv insert (fused)
    compressor  compress_close              a compressor window's entry
                compress_emit               ... gathered from the batch and the ring (fused)
    sampling    sample                      sync-free Gumbel-max sampling

A fused op (marked so) that a backend does not implement runs as the composition of that
backend's smaller ops (`banyan.kernels.composed`).

Optional third-party backends (FlashMLA, DeepGEMM, FlashInfer) plug in with `register`,
only after their package imports; none ships with Banyan today. The model calls these
functions and never imports Triton; kernel modules are imported on first use, so nothing
is decorated before a test's interpreter switch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable

import torch

from .indexer import QueryGroup
from .quant import QuantizedWeight
from .sparse_attention import KVIndex
from .kv_formats import IndexerKeys, KVPool

ENV = "BANYAN_KERNELS"
CHOICES = ("auto", "torch", "triton")

# op -> backend -> module (relative to this package) holding that backend's functions
_MODULES: dict[str, dict[str, str]] = {
    "gemm": {"torch": ".triton.ref.linear", "triton": ".triton.gemm_fp8"},
    "moe": {"torch": ".triton.ref.moe", "triton": ".triton.moe"},
    "router": {"torch": ".triton.ref.moe", "triton": ".triton.router"},
    "indexer": {"torch": ".triton.ref.attention", "triton": ".triton.indexer"},
    "attention": {"torch": ".triton.ref.attention", "triton": ".triton.sparse_attn"},
    "mhc": {"torch": ".mhc", "triton": ".triton.mhc"},
    "prologue": {"torch": ".triton.ref.attention", "triton": ".triton.prologue"},
    "compressor": {"torch": ".triton.ref.attention", "triton": ".triton.compressor"},
    "sampling": {"torch": ".triton.ref.sampling", "triton": ".triton.sampling"},
}
OPS = tuple(_MODULES)
MIN_CAPABILITY = (8, 0)


def register(op: str, name: str, module: str) -> None:
    """Make `name` a backend of `op`, its functions in the absolute module `module`. Call it only
    once that backend's package has imported (an import guard), e.g. for a FlashMLA adapter."""
    if op not in _MODULES:
        raise ValueError(f"unknown kernel op {op!r}; ops: {', '.join(OPS)}")
    if name == "auto":
        raise ValueError("'auto' is not a backend name")
    _MODULES[op][name] = module
    _parse.cache_clear()
    _resolve.cache_clear()


@lru_cache(maxsize=16)
def _parse(spec: str) -> tuple[str, dict[str, str]]:
    default, overrides = "auto", {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        op, eq, name = part.partition("=")
        if not eq:
            op, name = "", part
        op, name = op.strip(), name.strip()
        if op and op not in _MODULES:
            raise ValueError(f"{ENV}: unknown op {op!r} in {spec!r}; ops: {', '.join(OPS)}")
        known = set(CHOICES).union(*([_MODULES[op]] if op else _MODULES.values()))
        if name not in known:
            raise ValueError(f"{ENV}: unknown backend {name!r} in {spec!r}; choose from {', '.join(sorted(known))}")
        if op:
            overrides[op] = name
        else:
            default = name
    return default, overrides


@lru_cache(maxsize=8)
def _triton_ready(device: torch.device) -> bool:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
        return False
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def backend(op: str, device: torch.device | str) -> str:
    """The backend `op` runs on for tensors on `device`, under the current `BANYAN_KERNELS`."""
    return _backend(op, _setting(), device)


def _backend(op: str, spec: str, device: torch.device | str) -> str:
    if op not in _MODULES:
        raise ValueError(f"unknown kernel op {op!r}; ops: {', '.join(OPS)}")
    default, overrides = _parse(spec)
    name = overrides.get(op, default)
    if name == "auto":
        return "triton" if _triton_ready(torch.device(device)) else "torch"
    if name not in _MODULES[op]:
        raise ValueError(f"{ENV}: backend {name!r} has no implementation of {op!r}; it has {', '.join(_MODULES[op])}")
    return name


def selected(device: torch.device | str) -> dict[str, str]:
    """Backend of every op for `device` (for logs and benchmark reports)."""
    return {op: backend(op, device) for op in OPS}


@lru_cache(maxsize=64)
def _module(path: str) -> ModuleType:
    return importlib.import_module(path, __package__) if path.startswith(".") else importlib.import_module(path)


@lru_cache(maxsize=512)
def _resolve(op: str, fn: str, spec: str, device: torch.device) -> Callable[..., Any]:
    impl = getattr(_module(_MODULES[op][_backend(op, spec, device)]), fn, None)
    return impl if impl is not None else getattr(_module(".composed"), fn)


# The model makes hundreds of dispatch calls per decode step, each as cheap as a dict hit:
# the setting is read from CPython's backing store of `os.environ` (which every assignment
# to `os.environ` updates) without `os.environ.get`'s decoding, which cost more than a tiny
# matmul. Elsewhere it falls back to `os.environ.get`.
_ENV_STORE: dict = getattr(os.environ, "_data", None) or {}
_ENV_KEY = os.environ.encodekey(ENV) if _ENV_STORE and hasattr(os.environ, "encodekey") else None


def _setting() -> str:
    if _ENV_KEY is None:
        return os.environ.get(ENV, "auto")
    raw = _ENV_STORE.get(_ENV_KEY)
    return "auto" if raw is None else os.environ.decodevalue(raw)


def _impl(op: str, fn: str, device: torch.device) -> Callable[..., Any]:
    """The function behind one dispatch call: a cache hit keyed by the setting and the device."""
    return _resolve(op, fn, _setting(), device)


def linear(x: torch.Tensor, weight: QuantizedWeight | torch.Tensor, act_fp8: bool = False) -> torch.Tensor:
    """`x [..., K]` (bf16/fp32) times `weight [N, K]` -> `[..., N]` in x's dtype. A plain tensor
    is a dense weight (both backends hand it to `F.linear`, i.e. cuBLAS on a GPU).

    `act_fp8`: quantise x per 1x128 block with power-of-two scales first (official numerics)."""
    return _impl("gemm", "linear", x.device)(x, weight, act_fp8)


def grouped_linear(x: torch.Tensor, weight: QuantizedWeight | torch.Tensor, act_fp8: bool = False) -> torch.Tensor:
    """V4's `wo_a`: `x [T, G, D]` times `weight [G*R, D]` viewed `[G, R, D]` -> `[T, G, R]`."""
    return _impl("gemm", "grouped_linear", x.device)(x, weight, act_fp8)


def fused_moe(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: QuantizedWeight, w3: QuantizedWeight,
              w2: QuantizedWeight, limit: float) -> torch.Tensor:
    """Routed experts: `x [T, D]`, `ids [T, k]` int32/int64, `weights [T, k]` fp32, `w1/w3 [E, I, D]`,
    `w2 [E, D, I]` (dense, FP8 or FP4 as stored, all three alike)
    -> `sum_k weights * W2(silu(min(W1 x, limit)) * clamp(W3 x, +-limit))` `[T, D]` in x's dtype."""
    return _impl("moe", "fused_moe", x.device)(x, ids, weights, w1, w3, w2, limit)


def moe_layer(x: torch.Tensor, gate: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
              tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None, w1: QuantizedWeight, w3: QuantizedWeight,
              w2: QuantizedWeight, shared: tuple[QuantizedWeight | torch.Tensor, ...] | None, limit: float
              ) -> torch.Tensor:
    """A whole MoE layer of `x [T, D]` on one rank -> `[T, D]` in x's dtype: gate `[E, D]` logits, `route`,
    `fused_moe`, plus the shared expert `(w1, w3, w2)` when given (see `kernels.composed.moe_layer`)."""
    return _impl("moe", "moe_layer", x.device)(x, gate, bias, top_k, route_scale, tid2eid, input_ids, w1, w3, w2,
                                               shared, limit)


def shared_expert(x: torch.Tensor, w1: QuantizedWeight | torch.Tensor, w3: QuantizedWeight | torch.Tensor,
                  w2: QuantizedWeight | torch.Tensor, limit: float) -> torch.Tensor:
    """The shared expert `W2(swiglu(W1 x, W3 x))`: `x [T, D]`, `w1 / w3 [I, D]`, `w2 [D, I]` (a plain
    tensor is dense) -> `[T, D]` in x's dtype."""
    return _impl("moe", "shared_expert", x.device)(x, w1, w3, w2, limit)


def route(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
          tid2eid: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate logits `[T, E]` fp32 -> (ids `[T, k]`, weights `[T, k]` fp32): sqrt-softplus scores,
    top-k of scores + `bias` fp32 (or `tid2eid[input_ids]` on hash layers, `tid2eid [V, k]` int64), weights
    summing to `route_scale`. ids are int64 from torch, int32 from Triton; their order within
    a row is unspecified (`fused_moe` takes either)."""
    return _impl("router", "route", logits.device)(logits, bias, top_k, route_scale, tid2eid, input_ids)


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys: IndexerKeys, groups: Sequence[QueryGroup],
                 topk: int) -> torch.Tensor:
    """`q [T, H, d]`, `weights [T, H]` (scales folded in), keys float `[S, d]` or `FP8IndexerKeys`
    -> `[T, min(topk, max E)]` int64 key rows, -1 padded (see `kernels.indexer`)."""
    return _impl("indexer", "indexer_topk", q.device)(q, weights, keys, groups, topk)


def indexer_select(x: torch.Tensor, qr: torch.Tensor, wq_b: QuantizedWeight | torch.Tensor,
                   weights_proj: QuantizedWeight | torch.Tensor, heads: int, rope: torch.Tensor, keys: IndexerKeys,
                   groups: Sequence[QueryGroup], topk: int) -> torch.Tensor:
    """The indexer's queries from `x [T, D]` and `qr [T, R]`, then `indexer_topk` -> `[T, K]` int64
    key rows (see `kernels.composed.indexer_select`)."""
    return _impl("indexer", "indexer_select", x.device)(x, qr, wq_b, weights_proj, heads, rope, keys, groups, topk)


def sparse_attention(q: torch.Tensor, kv: KVPool, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: KVPool | None = None, extra_index: KVIndex | None = None,
                     inv_rope: torch.Tensor | None = None) -> torch.Tensor:
    """`q [T, H, D]` over the rows `index` lists in `kv` (and `extra_index` in `extra`), pools float
    `[S, D]` or `FP8KVCache`, with the sink `[H]` fp32 -> `[T, H, D]` in q's dtype (see
    `kernels.sparse_attention`). `inv_rope [T, rd/2]` (complex): rotate the output's trailing dims."""
    return _impl("attention", "sparse_attention", q.device)(q, kv, index, sink, scale, extra, extra_index, inv_rope)


def attention_output(q: torch.Tensor, kv: KVPool, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: KVPool | None, extra_index: KVIndex | None, inv_rope: torch.Tensor | None,
                     wo_a: QuantizedWeight | torch.Tensor, groups: int, wo_b: QuantizedWeight | torch.Tensor
                     ) -> torch.Tensor:
    """`sparse_attention` of `q [T, H, hd]`, then `wo_b(wo_a.grouped(out))` with `groups` groups of
    `H*hd/groups` channels -> `[T, D]` in q's dtype (see `kernels.composed.attention_output`)."""
    return _impl("attention", "attention_output", q.device)(q, kv, index, sink, scale, extra, extra_index, inv_rope,
                                                            wo_a, groups, wo_b)


def hc_pre(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
           eps: float, sinkhorn_iters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`streams [T, n, D]` -> `(collapsed [T, D], post [T, n], comb [T, n, n])` (see `kernels.mhc`)."""
    return _impl("mhc", "hc_pre", streams.device)(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters)


def hc_pre_norm(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
                eps: float, sinkhorn_iters: int, weight: torch.Tensor, out_eps: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`hc_pre` with the collapsed rows RMS-normed by `weight [D]` (see `kernels.composed.hc_pre_norm`)."""
    return _impl("mhc", "hc_pre_norm", streams.device)(streams, fn, scale, base, norm_eps, eps, sinkhorn_iters,
                                                       weight, out_eps)


def hc_post(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """`Y[t, k] = post[t, k] * out[t] + sum_j comb[t, j, k] * X[t, j]` -> `[T, n, D]`."""
    return _impl("mhc", "hc_post", streams.device)(block_out, streams, post, comb)


def hc_head(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
            eps: float) -> torch.Tensor:
    """The collapse after the last layer: `[T, n, D] -> [T, D]`."""
    return _impl("mhc", "hc_head", streams.device)(streams, fn, scale, base, norm_eps, eps)


def hc_head_norm(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
                 eps: float, weight: torch.Tensor, out_eps: float) -> torch.Tensor:
    """`hc_head`, then the final RMS norm by `weight [D]` (see `kernels.composed.hc_head_norm`)."""
    return _impl("mhc", "hc_head_norm", streams.device)(streams, fn, scale, base, norm_eps, eps, weight, out_eps)


def norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float, rope: torch.Tensor | None) -> torch.Tensor:
    """RMS norm of `x [T, H, D]` over D (times `weight [D]` if given), then RoPE of the trailing
    dims by `rope [T, rd/2]` (complex) -> `[T, H, D]` in x's dtype."""
    return _impl("prologue", "norm_rope", x.device)(x, weight, eps, rope)


def kv_insert(kv: torch.Tensor, weight: torch.Tensor, eps: float, rope: torch.Tensor, pool: KVPool,
              slots: torch.Tensor, qdq: bool = False) -> None:
    """`kv [T, D]` -> RMS norm (`weight`) -> RoPE -> `pool[slots]` (-1: skipped); an FP8 pool, or
    `qdq=True` on a float one, applies the official FP8 QDQ to the no-RoPE dims."""
    _impl("prologue", "kv_insert", kv.device)(kv, weight, eps, rope, pool, slots, qdq)


def attention_prologue(x: torch.Tensor, wq_a: QuantizedWeight | torch.Tensor, q_norm: torch.Tensor,
                       wq_b: QuantizedWeight | torch.Tensor, wkv: QuantizedWeight | torch.Tensor,
                       kv_norm: torch.Tensor, eps: float, heads: int, rope: torch.Tensor, pool: KVPool,
                       slots: torch.Tensor, qdq: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`x [T, D]` -> `(q [T, heads, hd], qr [T, R])`, inserting the kv rows into `pool` at `slots`
    (see `kernels.composed.attention_prologue`)."""
    return _impl("prologue", "attention_prologue", x.device)(x, wq_a, q_norm, wq_b, wkv, kv_norm, eps, heads, rope,
                                                             pool, slots, qdq)


def compressor_rows(x: torch.Tensor, wkv: QuantizedWeight | torch.Tensor, wgate: QuantizedWeight | torch.Tensor,
                    ape: torch.Tensor, ape_index: torch.Tensor) -> torch.Tensor:
    """A compressor's rows `[T, 2, W]` fp32 `(wkv x, wgate x + ape[ape_index])` of `x [T, D]` (a plain
    weight tensor is dense)."""
    return _impl("compressor", "compressor_rows", x.device)(x, wkv, wgate, ape, ape_index)


def compress_close(kv: torch.Tensor, score: torch.Tensor, weight: torch.Tensor, eps: float, rope: torch.Tensor,
                   pool: KVPool, slots: torch.Tensor, qdq: bool = False) -> None:
    """Closed windows `kv, score [E, S, d]` -> per-channel softmax pool over S -> RMS norm -> RoPE
    (`rope [E, rd/2]`) -> (QDQ) -> `pool[slots]` (-1: skipped)."""
    _impl("compressor", "compress_close", kv.device)(kv, score, weight, eps, rope, pool, slots, qdq)


def compress_emit(rows: torch.Tensor, ring: torch.Tensor, source: torch.Tensor, overlap: bool, weight: torch.Tensor,
                  eps: float, rope: torch.Tensor, pool: KVPool, slots: torch.Tensor, qdq: bool = False) -> None:
    """The entries of the windows closing in a batch, from its compressor rows `[N, 2, W]` and the
    request rings, into `pool` at `slots` (see `kernels.composed.compress_emit`)."""
    _impl("compressor", "compress_emit", rows.device)(rows, ring, source, overlap, weight, eps, rope, pool, slots, qdq)


def sample(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """`logits [B, V]`, `temperature [B]` (0 = greedy), `seeds`/`steps [B]` int64 -> tokens `[B]`
    int64 on the device, with no host sync (see `kernels.triton.ref.sampling`)."""
    return _impl("sampling", "sample", logits.device)(logits, temperature, seeds, steps)
