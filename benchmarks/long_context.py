"""Long-context benchmark: one request per context length, Banyan's Engine and transformers'
`generate` side by side on the same weights, prompts and dtype.

    banyan bench long-context [--lengths 1024 4096 16384 32768 61440] [--out results/long-context.json]

For each length and system: prefill tokens/s (the prompt's length over the time to the first
token), time per output token (the median gap between the `--decode-tokens` tokens decoded
after the prompt), and peak memory. Banyan runs with the prefix cache off and `--chunked-prefill-size` chunks;
transformers runs `generate` greedily with its own cache. Every (system, length) runs in a
fresh subprocess, so its peak memory is that run's alone: the high-water resident set
(`ru_maxrss`) of the process that holds the model — Banyan's scheduler process, or the
process calling `generate` — which includes the weights, torch and the KV state.
transformers is skipped above `--hf-max-length`. With `--repeats N` every (system, length) runs N
times, round-robin over the table, and each metric keeps its best run (the least prefill
time, the least TPOT, the largest peak RSS): on a shared machine a run's stalls are noise, and
the ratios compare what each system can do in the same time window.

The TPOT scaling is also measured paired (`--paired-rounds R`, on by default): one Engine with
the prefix cache on prefills a `--short-length` and a `--long-length` prompt once, then
alternates R times between decoding `--decode-tokens` tokens after each (the cache restores
each prompt but its last page, whole or partial, which is prefilled again). Each round's
long/short TPOT ratio compares two figures taken seconds apart, so a machine whose speed drifts
over minutes moves both alike; the reported ratio is the rounds' median, beside the
best-of-runs ratio of the cells.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..runtime.cli import DTYPES
from .output import save, standalone
from .plots import system_bars

SYSTEMS = ("banyan", "hf")
PAIRED = "banyan-paired"  # the worker of the paired TPOT rounds
LENGTHS = (1024, 4096, 16384, 32768, 61440)
RESULT_PREFIX = "LONG-CONTEXT-RESULT "
WARMUP_LEN = 300  # reaches the window and both compression paths of the model
# both systems under the thread policy the Engine gives its children: with active spin-waiting,
# transformers' decode on a busy 2-core machine measured ~17x slower (472 vs 26-28 ms per token at 1K)
WORKER_ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def prompt_ids(length: int, seed: int) -> list[int]:
    """Random ordinary-vocabulary token ids (no special tokens)."""
    rng = random.Random(seed)
    return [rng.randrange(3, 128000) for _ in range(length)]


def timings(length: int, start: float, token_times: list[float]) -> dict:
    """Prefill rate from the first token's arrival, and TPOT as the median gap between
    consecutive tokens (a median, so that a busy machine's stalls do not dominate)."""
    if len(token_times) < 2:
        raise RuntimeError(f"expected at least 2 output tokens, got {len(token_times)}")
    prefill_s = token_times[0] - start
    gaps = [b - a for a, b in zip(token_times, token_times[1:])]
    return {"prefill_s": prefill_s, "prefill_tok_s": length / prefill_s, "tpot_ms": 1e3 * statistics.median(gaps),
            "decode_tokens": len(token_times)}


def peak_rss_mb(who: int) -> float:
    """`ru_maxrss` (KiB on Linux) of this process or of its largest waited-for child, in MiB."""
    return resource.getrusage(who).ru_maxrss / 1024


@contextlib.contextmanager
def _engine(model_path: str | None, args: argparse.Namespace, tokens: int, prefix_cache: bool, spare_pages: int = 0):
    """A batch-1 Engine whose pool holds `tokens` and `spare_pages` pages more (else a
    RuntimeError naming --kv-cache-gb), warmed up; shut down on leaving, however that happens."""
    from ..runtime.engine import Engine

    with Engine(model_path, enable_prefix_cache=prefix_cache, chunked_prefill_size=args.chunked_prefill_size,
                dtype=DTYPES[args.dtype], max_running_requests=1,
                kv_cache_bytes=int(args.kv_cache_gb * (1 << 30))) as engine:
        capacity = engine.info["token_capacity"]
        tokens += spare_pages * engine.info["page_size"]
        if tokens > capacity:
            raise RuntimeError(f"{tokens} tokens exceed the pool's {capacity}; raise --kv-cache-gb")
        _decode(engine, prompt_ids(WARMUP_LEN, args.seed + 1), 2)
        yield engine


def _decode(engine, prompt: list[int], tokens: int) -> tuple[float, list[float], int]:
    """Greedy `tokens` after `prompt`, streamed: the start time, each token's arrival and the
    prompt tokens the prefix cache supplied."""
    params = {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}
    token_times: list[float] = []
    cached = 0
    start = time.perf_counter()
    for chunk in engine.generate(input_ids=prompt, sampling_params=params, stream=True):
        token_times += [time.perf_counter()] * len(chunk["output_ids"])
        cached = chunk["meta_info"]["cached_tokens"]
    return start, token_times, cached


def measure_banyan(model_path: str | None, length: int, args: argparse.Namespace) -> dict:
    with _engine(model_path, args, length + args.decode_tokens, prefix_cache=False) as engine:
        start, token_times, _ = _decode(engine, prompt_ids(length, args.seed), args.decode_tokens)
    # the scheduler process, joined at shutdown, is the largest child
    return {**timings(length, start, token_times), "peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN)}


def measure_paired(model_path: str | None, length: int, args: argparse.Namespace) -> dict:
    """TPOT after a `--short-length` and a `length` prompt, alternated `--paired-rounds` times
    in one Engine (see the module docstring); the order flips every round so that a steady
    drift favours neither. A round whose prompt missed the prefix cache is an error: it would
    not be the decode-only pair the ratio stands for."""
    prompts = {"short": prompt_ids(args.short_length, args.seed), "long": prompt_ids(length, args.seed + 2)}
    rounds = []
    # both prompts, their decodes and the cached warm-up, plus spare pages for each prompt's last
    # page (cached but never reused) and the running request's copy, so that the cache never
    # has to evict the idle prompt
    tokens = args.short_length + length + 2 * args.decode_tokens + WARMUP_LEN
    with _engine(model_path, args, tokens, prefix_cache=True, spare_pages=6) as engine:
        page = engine.info["page_size"]
        for prompt in prompts.values():
            _decode(engine, prompt, 2)  # into the prefix cache
        for r in range(args.paired_rounds):
            order = ("short", "long") if r % 2 == 0 else ("long", "short")
            row: dict = {"order": list(order)}
            for name in order:
                start, token_times, cached = _decode(engine, prompts[name], args.decode_tokens)
                expected = (len(prompts[name]) - 1) // page * page
                if cached < expected:
                    raise RuntimeError(f"round {r}: the {name} prompt reused {cached} cached tokens, not {expected}")
                t = timings(len(prompts[name]), start, token_times)
                row |= {f"{name}_tpot_ms": t["tpot_ms"], f"{name}_prefill_s": t["prefill_s"],
                        f"{name}_cached_tokens": cached}
            rounds.append({**row, "ratio": row["long_tpot_ms"] / row["short_tpot_ms"]})
    return {"short_length": args.short_length, "page_size": page, "rounds": rounds,
            "short_tpot_ms": statistics.median(r["short_tpot_ms"] for r in rounds),
            "long_tpot_ms": statistics.median(r["long_tpot_ms"] for r in rounds),
            "ratio_median": statistics.median(r["ratio"] for r in rounds)}


class _TokenClock:
    """A `generate` streamer that timestamps each new token (its first `put` is the prompt) and
    calls `after_prefill` once the first token is out."""

    def __init__(self, after_prefill=lambda: None) -> None:
        self.times: list[float] = []
        self._prompt_seen = False
        self._after_prefill = after_prefill

    def put(self, value) -> None:
        if self._prompt_seen:
            self.times += [time.perf_counter()] * value.numel()
            if len(self.times) == value.numel():
                self._after_prefill()
        self._prompt_seen = True

    def end(self) -> None:
        pass


def measure_hf(hf_path: str, length: int, args: argparse.Namespace) -> dict:
    import torch

    from ..model.threads import use_threads
    from ..runtime.tokenizer import SPECIAL_IDS
    from .hf_baseline import load_hf_model

    model = load_hf_model(hf_path, hf_path, dtype=getattr(torch, DTYPES[args.dtype]))  # already in its layout

    def generate(ids: list[int], new: int, clock: _TokenClock | None = None) -> None:
        with torch.inference_mode():
            model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=False, max_new_tokens=new, min_new_tokens=new,
                           pad_token_id=SPECIAL_IDS["pad"], streamer=clock)

    generate(prompt_ids(WARMUP_LEN, args.seed + 1), 2)
    # the thread counts Banyan's runner picks (model.threads): the prefill's, then a decode step's
    hidden = model.config.hidden_size
    clock = _TokenClock(after_prefill=lambda: use_threads(hidden, length))
    use_threads(hidden, length * length)
    start = time.perf_counter()
    generate(prompt_ids(length, args.seed), args.decode_tokens, clock)
    return {**timings(length, start, clock.times), "peak_rss_mb": peak_rss_mb(resource.RUSAGE_SELF)}


def run_worker(args: argparse.Namespace) -> int:
    """One (system, length) measurement, printed as a result line for the parent."""
    measure = {"banyan": measure_banyan, "hf": measure_hf, PAIRED: measure_paired}[args.worker]
    print(RESULT_PREFIX + json.dumps(measure(args.worker_model, args.worker_length, args)), flush=True)
    return 0


def _worker_argv(args: argparse.Namespace, system: str, model: str | None, length: int) -> list[str]:
    argv = [sys.executable, "-m", "banyan.benchmarks.long_context", "--worker", system, "--worker-length",
            str(length), "--decode-tokens", str(args.decode_tokens), "--chunked-prefill-size",
            str(args.chunked_prefill_size), "--dtype", args.dtype, "--kv-cache-gb", str(args.kv_cache_gb),
            "--seed", str(args.seed), "--short-length", str(args.short_length), "--paired-rounds",
            str(args.paired_rounds)]
    return argv + (["--worker-model", model] if model else [])


def run_one(args: argparse.Namespace, system: str, model: str | None, length: int) -> dict:
    """A fresh subprocess's measurement, or the reason it failed."""
    row = {"system": system, "length": length}
    try:
        proc = subprocess.run(_worker_argv(args, system, model, length), capture_output=True, text=True,
                              timeout=args.timeout, env=WORKER_ENV)
    except subprocess.TimeoutExpired:
        return {**row, "status": "error", "error": f"did not finish within --timeout {args.timeout:g} s"}
    results = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**row, "status": "error", "error": f"exit code {proc.returncode}: {' | '.join(tail)}"}
    return {**row, "status": "ok", **json.loads(results[-1][len(RESULT_PREFIX):])}


def _row(rows: list[dict], system: str, length: int) -> dict | None:
    return next((r for r in rows if r["system"] == system and r["length"] == length and r["status"] == "ok"), None)


def ratios(rows: list[dict], short: int, long: int, hf_length: int) -> list[dict]:
    """Banyan's long/short scaling, and Banyan against transformers (prefill at `hf_length`,
    decode at `short`); a ratio whose rows are missing is None."""
    specs = [(f"banyan prefill tok/s, {long} / {short}", ("banyan", long), ("banyan", short), "prefill_tok_s"),
             (f"banyan TPOT, {long} / {short}", ("banyan", long), ("banyan", short), "tpot_ms"),
             (f"prefill tok/s at {hf_length}, banyan / hf", ("banyan", hf_length), ("hf", hf_length), "prefill_tok_s"),
             (f"TPOT at {short}, banyan / hf", ("banyan", short), ("hf", short), "tpot_ms")]
    out = []
    for name, num, den, metric in specs:
        a, b = _row(rows, *num), _row(rows, *den)
        out.append({"name": name, "metric": metric, "numerator": list(num), "denominator": list(den),
                    "value": a[metric] / b[metric] if a and b else None})
    return out


def best_of(runs: list[dict]) -> dict:
    """One (system, length) row from its runs: each metric's best run (see the module docstring);
    an error when no run succeeded."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return runs[-1]
    fastest = min(ok, key=lambda r: r["prefill_s"])
    return {**fastest, "tpot_ms": min(r["tpot_ms"] for r in ok), "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
            "runs": [{k: r.get(k) for k in ("status", "prefill_s", "tpot_ms", "peak_rss_mb", "error")} for r in runs]}


def run_long_context(args: argparse.Namespace) -> dict:
    from ..model.default import default_model_dir
    from .hf_baseline import transformers_checkpoint

    model = args.model_path or str(default_model_dir())
    cells = [(length, system) for length in args.lengths for system in args.systems]
    runs: dict[tuple[int, str], list[dict]] = {cell: [] for cell in cells}
    with tempfile.TemporaryDirectory(prefix="banyan-long-context-") as workdir:
        hf_model = str(transformers_checkpoint(model, workdir)) if "hf" in args.systems else None
        for _ in range(args.repeats):
            for length, system in cells:
                if system == "hf" and length > args.hf_max_length:
                    continue
                runs[(length, system)].append(run_one(args, system, model if system == "banyan" else hf_model, length))
                print(format_row(runs[(length, system)][-1]), file=sys.stderr, flush=True)
    paired = run_one(args, PAIRED, model, args.long_length) if wants_paired(args) else None
    if paired is not None:
        print(format_paired(paired), file=sys.stderr, flush=True)
    rows = [best_of(runs[(length, system)]) if runs[(length, system)] else
            {"system": system, "length": length, "status": "skipped",
             "reason": f"longer than --hf-max-length {args.hf_max_length}"} for length, system in cells]
    return {"benchmark": "long-context", "config": {k: v for k, v in vars(args).items() if k != "func"},
            "rows": rows, "paired": paired,
            "ratios": ratios(rows, args.short_length, args.long_length, args.hf_max_length)
            + ([paired_ratio(args, paired)] if paired is not None else [])}


def wants_paired(args: argparse.Namespace) -> bool:
    return args.paired_rounds > 0 and "banyan" in args.systems


def paired_ratio(args: argparse.Namespace, paired: dict) -> dict:
    """The paired rounds' median ratio; it names no rows (`source`), since both lengths come
    from the one paired run."""
    ok = paired["status"] == "ok"
    return {"name": f"banyan TPOT, {args.long_length} / {args.short_length}, paired rounds", "metric": "tpot_ms",
            "source": PAIRED, "value": paired["ratio_median"] if ok else None}


def format_row(r: dict) -> str:
    head = f"{r['length']:>8} {r['system']:<8}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r.get('reason') or r.get('error')}"
    return (f"{head} {r['prefill_s']:>10.2f} {r['prefill_tok_s']:>12.1f} {r['tpot_ms']:>10.2f} "
            f"{r['peak_rss_mb']:>10.0f}")


def format_paired(paired: dict) -> str:
    if paired["status"] != "ok":
        return f"paired rounds: {paired['error']}"
    return f"paired rounds, TPOT ms at {paired['short_length']} / {paired['length']}: " + ", ".join(
        f"{r['short_tpot_ms']:.2f} / {r['long_tpot_ms']:.2f}" for r in paired["rounds"])


def format_table(result: dict) -> str:
    lines = [f"{'length':>8} {'system':<8} {'prefill s':>10} {'prefill t/s':>12} {'TPOT ms':>10} {'peak MiB':>10}"]
    lines += [format_row(r) for r in result["rows"]]
    if result["paired"] is not None:
        lines += ["", format_paired(result["paired"])]
    lines.append("")
    for r in result["ratios"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        lines.append(f"{r['name']:<44} {value:>8}")
    return "\n".join(lines)


def plots(result: dict, out: Path) -> list[Path]:
    """Bars per length: prefill tokens/s, TPOT and peak memory of each system."""
    by_length = {str(length): {"systems": {r["system"]: r for r in result["rows"]
                                           if r["length"] == length and r["status"] == "ok"}}
                 for length in dict.fromkeys(r["length"] for r in result["rows"])}
    written = []
    for metric, ylabel, name in (("prefill_tok_s", "prefill tokens / s", "prefill"),
                                 ("tpot_ms", "ms per output token", "tpot"), ("peak_rss_mb", "peak RSS, MiB", "memory")):
        written += system_bars(by_length, out, metric, ylabel, f"{ylabel} by context length", name)
    return written


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", default=None, help="V4 checkpoint, either layout (default: the embedded tiny model)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="prompt tokens, one request each")
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded after each prompt (>= 2)")
    p.add_argument("--chunked-prefill-size", type=int, default=4096)
    p.add_argument("--hf-max-length", type=int, default=16384,
                   help="longest prompt given to transformers; its prefill is compared with Banyan's there")
    p.add_argument("--short-length", type=int, default=1024, help="the short length of the ratios")
    p.add_argument("--long-length", type=int, default=32768, help="the long length of the ratios")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--kv-cache-gb", type=float, default=0.5, help="Banyan's state-pool budget")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per (system, length) run")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per system and length, round-robin; each metric keeps its best run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results file; plots are written beside it")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--paired-rounds", type=int, default=8,
                   help="alternated short/long decode rounds in one Engine for a paired TPOT ratio (0: none)")
    p.add_argument("--worker", choices=SYSTEMS + (PAIRED,), default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-length", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.decode_tokens < 2:
        raise SystemExit("--decode-tokens must be >= 2 (TPOT is the gap between output tokens)")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.paired_rounds < 0:
        raise SystemExit("--paired-rounds must be >= 0")
    if args.worker:
        return run_worker(args)
    result = run_long_context(args)
    print(format_table(result))
    save(args.out, result, args.plots and (lambda out: plots(result, out)))
    measured = result["rows"] + ([result["paired"]] if result["paired"] else [])
    return 0 if all(r["status"] != "error" for r in measured) else 1


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
