"""Online benchmark: sessions streamed to a running server over HTTP.

    python -m banyan.benchmarks.serving --url http://127.0.0.1:30000 --backend banyan \\
        --dataset shared-prefix --num-prompts 64 --max-concurrency 1 4 16 --out results/serve.json

Sessions start as a Poisson process at `--request-rate` (default: all at once) with at
most `--max-concurrency` in flight; several values of either run one after another (a
sweep), each on a flushed prefix cache. Results, with every request's TTFT and latency,
go to `--out` as JSON, with plots beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time

import httpx
import numpy as np
from tqdm import tqdm

from .backends import BACKENDS, Sampling
from .datasets import add_dataset_args, dataset_from_args, warmup_dataset
from .metrics import RequestRecord, summarize
from .workloads import BenchRequest, Session
from .output import save, standalone
from .plots import serving_plots


def arrival_offsets(n: int, rate: float, seed: int = 0) -> list[float]:
    """Start times of `n` sessions: a Poisson process at `rate` per second (all at 0 for inf)."""
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist() if n else []


async def run_sessions(sessions: list[Session], send, rate: float = math.inf, max_concurrency: int | None = None,
                       seed: int = 0, progress: bool = True) -> tuple[list[RequestRecord], float]:
    """Run every session; the records of all their requests and the wall time."""
    records: list[RequestRecord] = []
    bar = tqdm(total=sum(s.num_requests for s in sessions), disable=not progress, desc="requests")
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else contextlib.nullcontext()

    async def recorded(request: BenchRequest) -> RequestRecord:
        record = await send(request)
        records.append(record)
        bar.update()
        return record

    async def one(session: Session, at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        async with limit:
            await session.run(recorded)

    start = time.perf_counter()
    await asyncio.gather(*(one(s, at) for s, at in zip(sessions, arrival_offsets(len(sessions), rate, seed))))
    duration = time.perf_counter() - start
    bar.close()
    return records, duration


async def _model_name(client: httpx.AsyncClient) -> str:
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def benchmark(url: str, backend: str, sessions: list[Session], *, points: list[tuple[float, int | None]],
                    warmup: int = 0, model: str | None = None, api_key: str | None = None,
                    sampling: Sampling | None = None, flush_cache: bool = True, timeout: float = 600.0,
                    seed: int = 0, progress: bool = True) -> list[dict]:
    """One run per (request rate, max concurrency) point; each a summary plus raw latencies."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)) as client:
        if model is None and backend != "banyan":
            model = await _model_name(client)
        impl = BACKENDS[backend](model or "", sampling or Sampling())

        async def send(request: BenchRequest) -> RequestRecord:
            return await impl.send(client, request)

        if warmup:
            records, _ = await run_sessions(warmup_dataset(warmup), send, progress=False)
            if failed := [r.error for r in records if not r.ok]:
                raise RuntimeError(f"warm-up failed: {failed[0]}")
        runs = []
        for rate, concurrency in points:
            if flush_cache:
                await client.post("/flush_cache")  # a server without it answers 404; nothing to flush then
            records, duration = await run_sessions(sessions, send, rate, concurrency, seed, progress)
            ok = [r for r in records if r.ok]
            runs.append({"request_rate": None if math.isinf(rate) else rate, "max_concurrency": concurrency, **summarize(records, duration),
                         "latencies": {"ttft_s": [r.ttft for r in ok if r.ttft is not None],
                                       "e2e_s": [r.e2e for r in ok]}})
    return runs


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:30000", help="server base URL")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="openai-completions")
    p.add_argument("--model", default=None, help="model name for the OpenAI APIs (default: the first of /v1/models)")
    p.add_argument("--api-key", default=None)
    add_dataset_args(p)
    p.add_argument("--request-rate", type=float, nargs="+", default=[math.inf],
                   help="sessions per second, Poisson arrivals (default inf: all at once); several values sweep")
    p.add_argument("--max-concurrency", type=int, nargs="+", default=[None],
                   help="sessions in flight at most; several values sweep")
    p.add_argument("--warmup", type=int, default=2, help="short unrelated requests before measuring")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--flush-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="POST /flush_cache before each run")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--out", default=None, help="JSON results file; plots are written beside it")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--disable-tqdm", action="store_true")


def _line(run: dict) -> str:
    return (f"rate={run['request_rate']} concurrency={run['max_concurrency']}: "
            f"{run['completed']} ok, {run['errors']} errors, {run['request_throughput']:.2f} req/s, "
            f"in {run['input_token_throughput']:.1f} tok/s, out {run['output_token_throughput']:.1f} tok/s, "
            f"TTFT p50 {_ms(run['ttft_s']['p50'])}, TPOT p50 {_ms(run['tpot_s']['p50'])}, "
            f"ITL p50 {_ms(run['itl_s']['p50'])}, E2E p50 {_ms(run['e2e_s']['p50'])}, "
            f"cached {run['cached_ratio']:.0%}")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def run(args: argparse.Namespace) -> int:
    sessions = dataset_from_args(args)
    points = [(rate, c) for rate in args.request_rate for c in args.max_concurrency]
    runs = asyncio.run(benchmark(args.url, args.backend, sessions, points=points, warmup=args.warmup,
                                 model=args.model, api_key=args.api_key,
                                 sampling=Sampling(args.temperature, args.ignore_eos), flush_cache=args.flush_cache,
                                 timeout=args.timeout, seed=args.seed, progress=not args.disable_tqdm))
    for r in runs:
        print(_line(r))
    config = {k: v for k, v in vars(args).items() if k not in ("func", "api_key")}
    config["request_rate"] = [None if math.isinf(r) else r for r in args.request_rate]  # None: all at once
    save(args.out, {"benchmark": "serving", "config": config, "runs": runs},
         args.plots and (lambda out: serving_plots(runs, out)))
    return 0 if all(r["errors"] == 0 for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
