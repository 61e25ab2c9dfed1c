"""Greedy agreement between KV dtypes: the same prompts decoded with each, tokens compared.

    python -m banyan.benchmarks.kv_agreement [MODEL] [--prompts 4] [--prompt-len 300]
        [--new-tokens 200] [--kv-dtypes bfloat16 fp8_e4m3] [--dtype float32] [--out FILE]

MODEL is a checkpoint directory or cached hub id (default: the embedded tiny model). Per
prompt it reports how many generated tokens agree before the first divergence and in all,
the first KV dtype being the reference.
"""

from __future__ import annotations

import argparse

import torch

from ..model.default import default_model_dir
from ..model.generate import SimpleSession
from ..model.hub import resolve_model_path
from ..model.kv_cache import KV_CACHE_DTYPES, V4KVCache
from ..model.loader import load_model
from ..model.network import DeepseekV4
from .output import save, standalone


def greedy(model: DeepseekV4, ids: list[int], new_tokens: int, kv_cache_dtype: str) -> list[int]:
    """Greedy tokens after `ids` with the KV pools in `kv_cache_dtype`."""
    session = SimpleSession(model, max_tokens=len(ids) + new_tokens, max_requests=1)
    session.cache = V4KVCache(model.cfg, session.cache.shape, dtype=model.dtype, device=model.device,
                              kv_cache_dtype=kv_cache_dtype)
    logits, out = session.prefill(0, ids, chunk_size=256), []
    while len(out) < new_tokens:
        out.append(int(logits.argmax()))
        if len(out) < new_tokens:
            logits = session.extend({0: [out[-1]]})[0]
    return out


def agreement(reference: list[int], other: list[int]) -> dict[str, int]:
    first = next((i for i, (a, b) in enumerate(zip(reference, other)) if a != b), len(reference))
    return {"before_first_divergence": first, "equal": sum(a == b for a, b in zip(reference, other)),
            "tokens": len(reference)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="checkpoint or hub id (default: the embedded tiny model)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=300)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--kv-dtypes", nargs="+", choices=KV_CACHE_DTYPES, default=["bfloat16", "fp8_e4m3"])
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="model dtype")
    p.add_argument("--out", default=None, help="JSON results file")


def run(args: argparse.Namespace) -> int:
    path = resolve_model_path(args.model) if args.model else default_model_dir()
    model = load_model(path, dtype=getattr(torch, args.dtype), progress=False)
    gen = torch.Generator().manual_seed(0)
    results = []
    with torch.inference_mode():
        for i in range(args.prompts):
            ids = torch.randint(0, model.cfg.vocab_size, (args.prompt_len,), generator=gen).tolist()
            ref, *others = [greedy(model, ids, args.new_tokens, kv) for kv in args.kv_dtypes]
            row = {kv: agreement(ref, out) for kv, out in zip(args.kv_dtypes[1:], others)}
            results.append(row)
            print(f"prompt {i}: " + "; ".join(f"{kv} vs {args.kv_dtypes[0]}: {r['before_first_divergence']} tokens "
                                               f"before the first divergence, {r['equal']}/{r['tokens']} equal"
                                               for kv, r in row.items()))
    save(args.out, {"model": str(path), "dtype": args.dtype, "kv_dtypes": args.kv_dtypes, "prompts": results})
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
