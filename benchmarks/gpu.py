"""Model-level throughput on a GPU: decode tokens/s at several batch sizes with memory
bandwidth utilisation, and prefill tokens/s with achieved FLOP/s.

    python -m banyan.benchmarks.gpu [--batches 1 8 64] [--context 1024] [--out results/gpu.json]
    python -m banyan.benchmarks.gpu --tiny        # smoke test: tiny preset, CPU is fine

The model is a random ~2B-parameter V4 (the Flash architecture scaled down) built in
memory with the tiny-checkpoint value rules. MBU = the bytes a decode step must read
(weights it touches + the KV state attention reads) per second, over the device's
measured copy bandwidth; MFU = prefill FLOP/s over a measured large-matmul rate. Both
denominators are measured here, not datasheet peaks.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from ..model.config import CSA, HCA, ModelConfig
from ..model.generate import SimpleSession
from ..model.make_tiny import tiny_state
from ..model.network import DeepseekV4
from .output import save, standalone

EXPERT_MARK = ".ffn.experts."


def mid_config() -> ModelConfig:
    """Flash scaled to ~2.2B parameters (~0.9B active per token): 12 layers, 32 experts, top-4."""
    flash = ModelConfig.preset("flash").to_hf_dict()
    return ModelConfig.from_dict({**flash, "hidden_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 32,
                                  "q_lora_rank": 768, "o_groups": 4, "o_lora_rank": 512, "n_routed_experts": 32,
                                  "num_experts_per_tok": 4, "moe_intermediate_size": 512, "index_n_heads": 32,
                                  "expert_dtype": None, "quantization_config": None})


def random_model(cfg: ModelConfig, dtype: torch.dtype, device: str, seed: int = 0) -> DeepseekV4:
    with torch.device("meta"):
        model = DeepseekV4(cfg, dtype=dtype)
    model = model.to_empty(device=device)
    model.load_state_dict(tiny_state(cfg, seed, mtp=False))
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Fastest of `repeats` calls, in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large device-to-device `copy_` (each byte read once and written once)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timed(lambda: dst.copy_(src), device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of an `n x n` by `n x n` matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device)


def kv_read_bytes(cfg: ModelConfig, context: int, itemsize: int) -> int:
    """KV bytes one decode token reads: the sliding window in every layer, and all indexer
    keys plus the top-k selected entries (CSA) or all entries (HCA)."""
    total = 0
    for kind in cfg.layer_kinds:
        total += min(context, cfg.sliding_window) * cfg.head_dim
        if kind == CSA:
            entries = context // cfg.csa_ratio
            total += entries * cfg.index_head_dim + min(entries, cfg.index_topk) * cfg.head_dim
        elif kind == HCA:
            total += context // cfg.hca_ratio * cfg.head_dim
    return total * itemsize


def attention_flops(cfg: ModelConfig, positions: np.ndarray) -> float:
    """Attention FLOPs of queries at `positions` (keys visible: the window, indexer keys, selected or all entries)."""
    heads = 4 * cfg.num_heads * cfg.head_dim  # QK^T and PV, multiply-add = 2 FLOPs each
    total = 0.0
    for kind in cfg.layer_kinds:
        keys = np.minimum(positions, cfg.sliding_window).astype(float)
        if kind == CSA:
            entries = positions // cfg.csa_ratio
            total += (2 * cfg.index_n_heads * cfg.index_head_dim * entries).sum()
            keys += np.minimum(entries, cfg.index_topk)
        elif kind == HCA:
            keys += positions // cfg.hca_ratio
        total += heads * keys.sum()
    return float(total)


def param_groups(model: DeepseekV4) -> dict[str, tuple[int, int]]:
    """(parameters, bytes) of the embedding, the output head, the routed experts and the rest."""
    groups = {"embed": [0, 0], "head": [0, 0], "experts": [0, 0], "dense": [0, 0]}
    for name, p in model.named_parameters():
        key = {"embed.weight": "embed", "head.weight": "head"}.get(name, "experts" if EXPERT_MARK in name else "dense")
        groups[key][0] += p.numel()
        groups[key][1] += p.numel() * p.element_size()
    return {k: (n, b) for k, (n, b) in groups.items()}


def distinct_experts(cfg: ModelConfig, tokens: int) -> float:
    """Expected fraction of a layer's routed experts that `tokens` tokens touch, routing uniformly."""
    return 1 - (1 - cfg.num_experts_per_tok / cfg.n_routed_experts) ** tokens


def decode_step_bytes(model: DeepseekV4, batch: int, context: int) -> float:
    """Bytes one decode step must read: every weight but the embedding (one row per token),
    the routed experts the batch touches, and each request's KV reads."""
    g = param_groups(model)
    return (g["dense"][1] + g["head"][1] + g["experts"][1] * distinct_experts(model.cfg, batch)
            + batch * kv_read_bytes(model.cfg, context, model.embed.weight.element_size()))


def active_params(model: DeepseekV4) -> float:
    """Weights each token multiplies with, the output head aside: routed experts count at top-k of n."""
    cfg, g = model.cfg, param_groups(model)
    return g["dense"][0] + g["experts"][0] * cfg.num_experts_per_tok / cfg.n_routed_experts


def prefill_flops(model: DeepseekV4, tokens: int) -> float:
    """Matmul FLOPs of prefilling `tokens` tokens (logits for the last one only) plus attention."""
    head = param_groups(model)["head"][0]
    return 2 * active_params(model) * tokens + 2 * head + attention_flops(model.cfg, np.arange(1, tokens + 1))


def decode_bench(model: DeepseekV4, batch: int, context: int, steps: int, copy_bw: float) -> dict:
    """`batch` requests prefilled to `context` tokens, then `steps` decode steps timed."""
    device = model.device
    session = SimpleSession(model, max_tokens=context + 4 * (steps + 1), max_requests=batch)
    gen = torch.Generator().manual_seed(batch)
    for slot in range(batch):
        session.prefill(slot, torch.randint(3, 128000, (context,), generator=gen).tolist())
    tokens = {s: [5] for s in range(batch)}  # a fixed token: sampling is not part of the model's step
    seconds = timed(lambda: [session.extend(tokens) for _ in range(steps)], device) / steps
    step_bytes = decode_step_bytes(model, batch, context)
    return {"batch": batch, "context": context, "step_ms": seconds * 1e3, "tokens_per_s": batch / seconds,
            "bytes_per_step": step_bytes, "achieved_bytes_per_s": step_bytes / seconds,
            "mbu": step_bytes / seconds / copy_bw}


def prefill_bench(model: DeepseekV4, tokens: int, mm_rate: float) -> dict:
    """One request of `tokens` tokens prefilled in one forward from an empty state."""
    ids = torch.randint(3, 128000, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    session = SimpleSession(model, max_tokens=tokens, max_requests=1)

    def run() -> None:
        session.reset(0)
        session.prefill(0, ids)

    seconds = timed(run, model.device)
    flops = prefill_flops(model, tokens)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "flops": flops,
            "achieved_flops_per_s": flops / seconds, "mfu": flops / seconds / mm_rate}


def run_gpu(args: argparse.Namespace) -> dict:
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for a CPU smoke test")
    device = torch.device("cpu" if args.tiny and not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    cfg = ModelConfig.preset("tiny") if args.tiny else mid_config()
    model = random_model(cfg, dtype, str(device), args.seed)
    copy_bw = copy_bandwidth(device, (64 << 20) if args.tiny else (2 << 30))
    mm_rate = matmul_rate(device, dtype, 512 if args.tiny else 8192)
    groups = param_groups(model)
    return {"benchmark": "gpu", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype), "config": "tiny" if args.tiny else "mid",
            "params": sum(n for n, _ in groups.values()),
            "active_params_per_token": active_params(model) + groups["head"][0],
            "param_groups": {k: {"params": n, "bytes": b} for k, (n, b) in groups.items()},
            "copy_bandwidth_bytes_per_s": copy_bw, "matmul_flops_per_s": mm_rate,
            "decode": [decode_bench(model, b, args.context, args.steps, copy_bw) for b in args.batches],
            "prefill": prefill_bench(model, args.prefill_len, mm_rate)}


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_report(r: dict) -> str:
    lines = [f"{r['device']} {r['dtype']}: {_si(r['params'], 'params')} ({_si(r['active_params_per_token'], 'active')}), "
             f"copy {_si(r['copy_bandwidth_bytes_per_s'], 'B/s')}, matmul {_si(r['matmul_flops_per_s'], 'FLOP/s')}"]
    for d in r["decode"]:
        lines.append(f"decode batch {d['batch']:>3} @ {d['context']} ctx: {d['tokens_per_s']:>9.1f} tok/s "
                     f"({d['step_ms']:.2f} ms/step), {_si(d['achieved_bytes_per_s'], 'B/s')}, MBU {d['mbu']:.1%}")
    p = r["prefill"]
    lines.append(f"prefill {p['tokens']} tokens: {p['tokens_per_s']:.0f} tok/s, "
                 f"{_si(p['achieved_flops_per_s'], 'FLOP/s')}, MFU {p['mfu']:.1%}")
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="tiny preset (CPU when there is no GPU): a smoke test")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="decode batch sizes (default 1 8 64)")
    p.add_argument("--context", type=int, default=None, help="tokens per request before decoding (default 1024)")
    p.add_argument("--steps", type=int, default=None, help="decode steps timed (default 32)")
    p.add_argument("--prefill-len", type=int, default=None, help="prefill tokens (default 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results file")


TINY_DEFAULTS = {"batches": [1, 4], "context": 160, "steps": 4, "prefill_len": 256}
FULL_DEFAULTS = {"batches": [1, 8, 64], "context": 1024, "steps": 32, "prefill_len": 4096}


def run(args: argparse.Namespace) -> int:
    for key, value in (TINY_DEFAULTS if args.tiny else FULL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    result = run_gpu(args)
    print(format_report(result))
    save(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
