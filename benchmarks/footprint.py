"""Memory footprint: resident weight bytes per weight format and KV bytes per cached token.

    python -m banyan.benchmarks.footprint [tiny flash pro | DIR | org/name ...] [--out results/footprint.json]

Each argument is a config preset or a checkpoint (its config.json is read; weights are not
loaded). Nothing is allocated: the numbers come from the model and KV-cache classes built
on the meta device (see `banyan.model.footprint`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.config import PRESETS, ModelConfig
from ..model.footprint import GIB, footprint
from ..model.hub import resolve_model_path
from .output import save, standalone

WEIGHT_COLUMNS = ("checkpoint", "native_bf16", "dequant_bf16", "dequant_fp32")


def load_config(name: str) -> ModelConfig:
    """A preset by name, else the config.json of a checkpoint directory or cached hub id."""
    if name in PRESETS:
        return ModelConfig.preset(name)
    return ModelConfig.from_json(Path(resolve_model_path(name)))


def format_table(results: dict[str, dict]) -> str:
    head = (f"{'model':<12}{'params':>10}" + "".join(f"{c:>14}" for c in WEIGHT_COLUMNS)
            + f"{'KV B/token':>12}{'KV GiB/1M':>11}{'SWA B/token':>13}")
    lines = ["weights in GiB; KV in bf16 (compressed entries, per cached token; SWA only for a request's window)",
             head]
    for name, r in results.items():
        kv = r["kv"]["bf16"]
        lines.append(f"{name:<12}{r['params'] / 1e9:>9.2f}B"
                     + "".join(f"{r['weights'][c]['total'] / GIB:>14.2f}" for c in WEIGHT_COLUMNS)
                     + f"{kv['compressed_per_token']:>12.0f}{kv['compressed_gib_per_million_tokens']:>11.2f}"
                     + f"{kv['swa_per_token']:>13.0f}")
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", default=["tiny", "flash", "pro"],
                   help=f"presets ({', '.join(PRESETS)}) or checkpoints (default: every preset)")
    p.add_argument("--out", default=None, help="JSON results file")


def run(args: argparse.Namespace) -> int:
    results = {name: footprint(load_config(name)) for name in args.models}
    print(format_table(results))
    save(args.out, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
