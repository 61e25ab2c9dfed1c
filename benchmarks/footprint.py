"""Memory footprint: resident weight bytes per weight format and KV bytes per cached token.

    python -m banyan.benchmarks.footprint [tiny flash pro | DIR | org/name ...] [--tp N] [--ep N]
        [--out results/footprint.json]

Each argument is a config preset or a checkpoint (its config.json is read; weights are not
loaded). Nothing is allocated: the numbers come from the model and KV-cache classes built
on the meta device (see `banyan.model.footprint`). With `--tp` / `--ep` every figure is per
rank: one rank's weight shard, and its KV (replicated on every rank under TP and EP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.config import PRESETS, ModelConfig
from ..model.footprint import GIB, KV_COLUMNS, footprint
from ..model.hub import resolve_model_path
from ..model.parallel import ParallelConfig
from .output import save, standalone

WEIGHT_COLUMNS = ("checkpoint", "native_bf16", "dequant_bf16", "dequant_fp32")


def load_config(name: str) -> ModelConfig:
    """A preset by name, else the config.json of a checkpoint directory or cached hub id."""
    if name in PRESETS:
        return ModelConfig.preset(name)
    return ModelConfig.from_json(Path(resolve_model_path(name)))


def format_table(results: dict[str, dict]) -> str:
    head = f"{'model':<12}{'params':>10}" + "".join(f"{c:>14}" for c in WEIGHT_COLUMNS)
    lines = ["weights in GiB", head]
    for name, r in results.items():
        lines.append(f"{name:<12}{r['params'] / 1e9:>9.2f}B"
                     + "".join(f"{r['weights'][c]['total'] / GIB:>14.2f}" for c in WEIGHT_COLUMNS))
    lines += ["", "KV per KV dtype: compressed entries + indexer keys per cached token (B, GiB per 1M tokens); "
              "SWA + overlap snapshots only for a request's window; compressor rings per running request",
              f"{'model':<12}{'KV dtype':>10}{'B/token':>10}{'GiB/1M':>9}{'SWA B/token':>13}{'rings MiB':>11}"]
    for name, r in results.items():
        for label in KV_COLUMNS:
            kv = r["kv"][label]
            lines.append(f"{name:<12}{label:>10}{kv['compressed_per_token']:>10.0f}"
                         f"{kv['compressed_gib_per_million_tokens']:>9.2f}{kv['swa_per_token']:>13.0f}"
                         f"{kv['ring_per_request'] / 2**20:>11.2f}")
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", default=["tiny", "flash", "pro"],
                   help=f"presets ({', '.join(PRESETS)}) or checkpoints (default: every preset)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks: report one rank's share")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel ranks (1 or the world size)")
    p.add_argument("--out", default=None, help="JSON results file")


def run(args: argparse.Namespace) -> int:
    parallel = ParallelConfig(tp=args.tp, ep=args.ep)
    if parallel.world_size > 1:
        print(f"per rank of {parallel.world_size} (tp {args.tp}, ep {args.ep})")
    results = {name: footprint(load_config(name), parallel) for name in args.models}
    print(format_table(results))
    save(args.out, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
