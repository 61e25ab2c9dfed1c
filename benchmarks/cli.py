"""`banyan bench ...`: the benchmarks as subcommands.

    banyan bench serve --url http://127.0.0.1:30000 --dataset shared-prefix ...   (online, over HTTP)
    banyan bench offline [--out results/offline.json]                           (Engine vs transformers)
    banyan bench programs [--out results/programs.json]                         (frontend programs, cache on/off)
    banyan bench gpu [--tiny]                                                   (decode MBU, prefill FLOP/s)
    banyan bench long-context [--lengths 1024 4096 ...]                         (prefill, TPOT, memory vs length)
    banyan bench footprint [tiny flash pro DIR...] [--out FILE]                 (weight and KV bytes)
    banyan bench speculative [--drafter perfect trained] [--k 0 1 2 3]          (MTP speculative decoding)

Each subcommand is also `python -m banyan.benchmarks.<serving|offline|programs|gpu|long_context|footprint|speculative>`.
"""

from __future__ import annotations

import argparse
import sys

from ..model.hub import resolve_model_path
from . import footprint, gpu, long_context, offline, programs, serving, speculative

SUBCOMMANDS = {
    "serve": (serving, "online benchmark against a running server"),
    "offline": (offline, "Engine (cache on/off) vs transformers generate on the same prompts"),
    "programs": (programs, "frontend programs with the radix cache on and off"),
    "gpu": (gpu, "model decode tokens/s with MBU and prefill FLOP/s (--tiny: CPU smoke test)"),
    "long-context": (long_context, "prefill tokens/s, TPOT and peak memory per context length, Engine vs transformers"),
    "footprint": (footprint, "resident weight bytes per weight format and KV bytes per cached token"),
    "speculative": (speculative, "MTP speculative decoding, K = 0..3: decode tok/s, target forwards per token, "
                                 "acceptance per position (perfect and trained drafters)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banyan bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=module.__doc__.splitlines()[0])
        module.add_args(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "model_path", None) is not None:  # a directory or a cached hub id
        args.model_path = resolve_model_path(args.model_path)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
