"""Program benchmarks: frontend programs run through an in-process engine with the radix
cache on and off, side by side.

    python -m banyan.benchmarks.programs [--model-path DIR] [--num 16] [--out results/programs.json]

Programs: `few-shot` (a long shared set of examples, one question each), `tree-of-thought`
(forks of one problem, each scored with `select`), `multi-turn` (a chat re-sending its
history), `json` (schema-constrained extraction after a shared instruction) and
`self-consistency` (N thinking branches of one question, majority vote). Each runs `--num`
instances with `run_batch`; the table gives programs/s, the prompt tokens the engine
computed, and the share of prompt tokens served from the cache.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import frontend as sgl
from ..runtime.cli import DTYPES
from .output import save, standalone
from .plots import system_bars

_FACTS = [f"Fact {i}: the {c} box holds {i * 7 % 23} {t}." for i, (c, t) in enumerate(
    (c, t) for c in ("red", "blue", "green", "white", "black", "amber") for t in ("pens", "coins", "keys", "cards"))]
_EXAMPLES = "\n".join(f"Q: How many items does box {i} hold?\nA: {i * 7 % 23}" for i in range(48))
_SCHEMA = {"type": "object", "properties": {"box": {"type": "string", "maxLength": 12},
                                            "count": {"type": "integer", "minimum": 0, "maximum": 99}},
           "required": ["box", "count"], "additionalProperties": False}


@sgl.function
def few_shot(s, i):
    s += "Answer with a number.\n" + _EXAMPLES + f"\nQ: How many items does box {100 + i} hold?\nA:"
    s += sgl.gen("answer", max_tokens=8, stop="\n")


@sgl.function
def tree_of_thought(s, i, width=3):
    s += "\n".join(_FACTS) + f"\nProblem {i}: which boxes hold more than ten items?\n"
    forks = s.fork(width)
    for k, f in enumerate(forks):
        f += f"Idea {k + 1}:" + sgl.gen("idea", max_tokens=16, stop="\n", temperature=0.8, seed=i * width + k)
        f += "\nGood idea?" + sgl.select("good", [" yes", " no"])
    forks.join()


@sgl.function
def multi_turn(s, i, turns=4):
    s += sgl.system("You are an inventory assistant.\n" + "\n".join(_FACTS))
    for t in range(turns):
        s += sgl.user(f"Question {t} of chat {i}: what is in box {t}?")
        s += sgl.assistant(sgl.gen(f"answer_{t}", max_tokens=12))


@sgl.function
def json_extraction(s, i):
    s += sgl.system("Extract the box and its count as JSON.\n" + "\n".join(_FACTS))
    s += sgl.user(f"Box number {i} holds {i % 20} items.")
    s += sgl.assistant(sgl.gen("record", max_tokens=40, json_schema=_SCHEMA))


@sgl.function
def self_consistency(s, i, branches=4):
    s += sgl.user("\n".join(_FACTS) + f"\nQuestion {i}: how many coins are there in all? Answer with a number.")
    sgl.self_consistency(s, branches, "answer", max_tokens=6, max_thinking_tokens=24, dtype=int, seed=i)


@dataclass
class Program:
    function: sgl.Function
    description: str


PROGRAMS: dict[str, Program] = {
    "few-shot": Program(few_shot, "48 shared examples, one question"),
    "tree-of-thought": Program(tree_of_thought, "3 forks of one problem, each scored with select"),
    "multi-turn": Program(multi_turn, "4 chat turns re-sending the history"),
    "json": Program(json_extraction, "JSON schema output after a shared instruction"),
    "self-consistency": Program(self_consistency, "4 thinking branches, majority vote"),
}


def run_program(backend: sgl.Backend, program: Program, num: int, threads: int) -> dict[str, Any]:
    """`num` instances through `run_batch`, on a flushed cache; wall time and engine counters."""
    engine = backend.engine
    if not engine.flush_cache():
        raise RuntimeError("could not flush the prefix cache (requests still running)")
    before = engine.stats()
    start = time.perf_counter()
    states = program.function.run_batch([{"i": i} for i in range(num)], backend=backend, num_threads=threads,
                                        temperature=0)
    seconds = time.perf_counter() - start
    errors = [str(s.error()) for s in states if s.error() is not None]
    after = engine.stats()
    computed = after["prefill_tokens"] - before["prefill_tokens"]
    cached = after["cache_hit_tokens"] - before["cache_hit_tokens"]
    return {"seconds": seconds, "programs": num, "programs_per_s": num / seconds, "errors": len(errors),
            "error_examples": errors[:3], "computed_prompt_tokens": computed, "cached_prompt_tokens": cached,
            "cached_ratio": cached / (cached + computed) if cached + computed else 0.0}


def run_programs(model_path: str | None, names: list[str], num: int, threads: int, options: dict,
                 progress: Callable[[str], None] = print) -> dict[str, dict]:
    """Every program with the cache on, then off: `{program: {"systems": {"cache on": ..., "cache off": ...}}}`."""
    results: dict[str, dict] = {name: {"description": PROGRAMS[name].description, "systems": {}} for name in names}
    for label, cache in (("cache on", True), ("cache off", False)):
        with sgl.LocalEngine(model_path, enable_prefix_cache=cache, **options) as backend:
            run_program(backend, PROGRAMS["few-shot"], 1, 1)  # warm-up
            for name in names:
                results[name]["systems"][label] = run_program(backend, PROGRAMS[name], num, threads)
                progress(f"{name:<17} {label:<9} {results[name]['systems'][label]['programs_per_s']:.2f} programs/s")
    for r in results.values():
        on, off = r["systems"]["cache on"], r["systems"]["cache off"]
        r["speedup"] = on["programs_per_s"] / off["programs_per_s"]
        r["computed_off_over_on"] = off["computed_prompt_tokens"] / max(on["computed_prompt_tokens"], 1)
    return results


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'program':<17} {'cache':<9} {'prog/s':>8} {'computed tok':>13} {'cached':>7}"]
    for name, r in results.items():
        for label, m in r["systems"].items():
            lines.append(f"{name:<17} {label:<9} {m['programs_per_s']:>8.2f} {m['computed_prompt_tokens']:>13} "
                         f"{m['cached_ratio']:>7.0%}")
        lines.append(f"{'':<17} speed-up with cache {r['speedup']:.2f}x, prompt tokens computed "
                     f"{r['computed_off_over_on']:.1f}x fewer")
    return "\n".join(lines)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", default=None, help="V4 checkpoint (default: the embedded tiny model)")
    p.add_argument("--programs", nargs="+", choices=list(PROGRAMS), default=list(PROGRAMS))
    p.add_argument("--num", type=int, default=16, help="instances of each program")
    p.add_argument("--threads", type=int, default=16, help="run_batch threads")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--kv-cache-gb", type=float, default=1.0)
    p.add_argument("--out", default=None, help="JSON results file; a cache on/off plot is written beside it")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)


def run(args: argparse.Namespace) -> int:
    options = {"dtype": DTYPES[args.dtype], "max_running_requests": args.max_running_requests,
               "kv_cache_bytes": int(args.kv_cache_gb * (1 << 30))}
    results = run_programs(args.model_path, args.programs, args.num, args.threads, options)
    print(format_table(results))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    save(args.out, {"benchmark": "programs", "config": config, "programs": results},
         args.plots and (lambda out: system_bars(results, out, "programs_per_s", "programs / s",
                                                 "programs: cache on vs off")))
    return 0 if all(m["errors"] == 0 for r in results.values() for m in r["systems"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
