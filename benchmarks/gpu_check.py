"""GPU check in one command: versions, every Triton kernel compiled at V4-Flash shapes and
checked against its torch reference, a microbenchmark of each against its roofline, then
`banyan bench gpu` end to end; everything in one JSON.

    python -m banyan.benchmarks.gpu_check --out $OUT/gpu_check.json    (CUDA; under 7 minutes)
    python -m banyan.benchmarks.gpu_check --dry-run                    (tiny shapes; CPU runs the interpreter)

Roofline of a kernel = max(bytes it must move / measured copy bandwidth, FLOPs / measured
bf16 matmul rate); efficiency = roofline time / measured time. Reference times are single
runs of the torch path at the same shapes. A check that fails to compile or run is recorded
with its error and the rest go on; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import gpu
from .output import save, standalone

Thunk = Callable[[], object]
E2E_RESERVE_S = 30.0  # the model benchmark still starts this long past the kernel budget


@dataclass(frozen=True)
class Shapes:
    """Problem sizes: V4-Flash's, or tiny ones for the dry run (head_dim stays 512 for the FP8 rows)."""

    tokens: int = 64  # decode batch
    prefill: int = 1024  # prefill chunk
    hidden: int = 4096
    q_rank: int = 1024
    heads: int = 64
    head_dim: int = 512
    rope_dim: int = 64
    groups: int = 8
    o_rank: int = 1024
    experts: int = 256
    expert_dim: int = 2048
    top_k: int = 6
    index_heads: int = 64
    index_dim: int = 128
    index_topk: int = 512
    entries: int = 32768  # visible CSA entries per request: 128K context / 4
    window: int = 128
    hca_window: int = 128
    vocab: int = 129280
    page_rows: int = 128


FLASH = Shapes()
TINY = Shapes(tokens=3, prefill=24, hidden=256, q_rank=128, heads=4, groups=2, o_rank=128, experts=8, expert_dim=128,
              top_k=2, index_heads=8, index_topk=16, entries=96, window=16, hca_window=24, vocab=1000, page_rows=16)


@dataclass
class Case:
    """One kernel check: the kernel and its reference as thunks, how to compare them, what it moves."""

    name: str
    kernel: Thunk
    reference: Thunk
    error: Callable[[object, object], float]
    tol: float
    bytes: float
    flops: float = 0.0
    shape: dict = field(default_factory=dict)


def roofline_ms(nbytes: float, flops: float, copy_bw: float, mm_rate: float) -> float:
    """The time the slower of memory traffic and arithmetic needs, in ms."""
    return 1e3 * max(nbytes / copy_bw, flops / mm_rate)


def _parts(x: object) -> list[torch.Tensor]:
    return [t for t in (x if isinstance(x, (tuple, list)) else [x]) if isinstance(t, torch.Tensor)]


def max_rel_error(out: object, ref: object) -> float:
    """max |out - ref| / max |ref|, the worst over the parts of a tuple."""
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))
               for a, b in zip(_parts(out), _parts(ref)))


def mean_rel_error(out: object, ref: object) -> float:
    """mean |out - ref| / mean |ref|: for FP8-stored results, where a rounding flip moves one value by a step."""
    return max(float((a.float() - b.float()).abs().mean() / b.float().abs().mean().clamp(min=1e-30))
               for a, b in zip(_parts(out), _parts(ref)))


def topk_miss_rate(out: object, ref: object) -> float:
    """1 - the mean overlap of each row's selected rows (-1 ignored): near-ties may pick differently."""
    misses = []
    for a, b in zip(out.tolist(), ref.tolist()):
        want = {r for r in b if r >= 0}
        misses.append(len(want - set(a)) / len(want) if want else float(any(r >= 0 for r in a)))
    return sum(misses) / len(misses)


def mismatch_rate(out: object, ref: object) -> float:
    return float((out != ref).float().mean())


class Builder:
    """Seeded inputs on one device for the cases."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def randn(self, *shape: int, dtype: torch.dtype = torch.bfloat16, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.gen, device=self.device) * std).to(dtype)

    def randint(self, low: int, high: int, *shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.gen, device=self.device, dtype=dtype)

    def fp8_weight(self, *shape: int):
        from ..kernels.quant import QuantizedWeight

        *lead, n, k = shape
        data = self.randn(*shape, dtype=torch.float32, std=64.0).clamp(-448, 448).to(torch.float8_e4m3fn)
        scale = self.randint(118, 122, *lead, -(-n // 128), -(-k // 128), dtype=torch.uint8)
        return QuantizedWeight(data, scale.view(torch.float8_e8m0fnu), "fp8")

    def fp4_weight(self, *shape: int):
        from ..kernels.quant import QuantizedWeight

        *lead, n, k = shape
        packed = self.randint(0, 256, *lead, n, k // 2, dtype=torch.uint8).view(torch.int8)
        scale = self.randint(120, 124, *lead, n, k // 32, dtype=torch.uint8)
        return QuantizedWeight(packed, scale.view(torch.float8_e8m0fnu), "fp4")

    def rope(self, positions: torch.Tensor, rope_dim: int) -> torch.Tensor:
        from ..kernels.rope import rope_inv_freq, rope_table

        return rope_table(positions, rope_inv_freq(rope_dim, 160000.0, 16.0).to(self.device))

    def fp8_pool(self, rows: int, page_rows: int, dim: int):
        from ..kernels.kv_formats import FP8KVCache

        pool = FP8KVCache.empty(rows, page_rows, device=self.device)
        pool.write(torch.arange(rows, device=self.device), self.randn(rows, dim, dtype=torch.float32))
        return pool


def gemm_cases(b: Builder, s: Shapes) -> list[Case]:
    from ..kernels.triton import gemm_fp8
    from ..kernels.triton.ref import linear as ref

    cases = []
    for name, m, n, k, act in (("wq_a", s.tokens, s.q_rank, s.hidden, False),
                               ("wq_b", s.tokens, s.heads * s.head_dim, s.q_rank, False),
                               ("wo_b.act_fp8", s.tokens, s.hidden, s.groups * s.o_rank, True),
                               ("wq_a.prefill", s.prefill, s.q_rank, s.hidden, False),
                               ("wo_b.prefill.act_fp8", s.prefill, s.hidden, s.groups * s.o_rank, True)):
        w, x = b.fp8_weight(n, k), b.randn(m, k)
        cases.append(Case(f"gemm.{name}", lambda x=x, w=w, a=act: gemm_fp8.linear(x, w, a),
                          lambda x=x, w=w, a=act: ref.linear(x, w, a), max_rel_error, 2e-2,
                          bytes=n * k + m * (k + n) * 2, flops=2 * m * n * k, shape=dict(m=m, n=n, k=k)))
    d = s.heads * s.head_dim // s.groups
    w, x = b.fp8_weight(s.groups * s.o_rank, d), b.randn(s.tokens, s.groups, d)
    cases.append(Case("gemm.wo_a.grouped", lambda: gemm_fp8.grouped_linear(x, w), lambda: ref.grouped_linear(x, w),
                      max_rel_error, 2e-2, bytes=w.nbytes + x.numel() * 2,
                      flops=2 * s.tokens * s.groups * s.o_rank * d,
                      shape=dict(t=s.tokens, g=s.groups, r=s.o_rank, d=d)))
    return cases


def moe_cases(b: Builder, s: Shapes) -> list[Case]:
    from ..kernels.triton import moe, router
    from ..kernels.triton.ref import moe as ref

    cases = []
    for fmt, t in (("fp4", s.tokens), ("fp8", s.tokens), ("fp4", s.prefill)):
        make = b.fp4_weight if fmt == "fp4" else b.fp8_weight
        w1, w3 = make(s.experts, s.expert_dim, s.hidden), make(s.experts, s.expert_dim, s.hidden)
        w2 = make(s.experts, s.hidden, s.expert_dim)
        x = b.randn(t, s.hidden, std=0.5)
        ids, weights = router.route(b.randn(t, s.experts, dtype=torch.float32), torch.zeros(s.experts, device=b.device),
                                    s.top_k, 1.5)
        touched = int(torch.unique(ids).numel())
        args = (x, ids, weights, w1, w3, w2, 10.0)
        cases.append(Case(f"moe.{fmt}.t{t}", lambda a=args: moe.fused_moe(*a), lambda a=args: ref.fused_moe_sorted(*a),
                          max_rel_error, 3e-2, bytes=(w1.nbytes + w3.nbytes + w2.nbytes) * touched / s.experts,
                          flops=6 * t * s.top_k * s.expert_dim * s.hidden,
                          shape=dict(t=t, experts=s.experts, touched=touched, fmt=fmt)))
    logits, bias = b.randn(s.tokens, s.experts, dtype=torch.float32), b.randn(s.experts, dtype=torch.float32, std=0.1)
    cases.append(Case("router.biased", lambda: router.route(logits, bias, s.top_k, 1.5),
                      lambda: ref.route(logits, bias, s.top_k, 1.5),
                      lambda o, r: max_rel_error(o[1].sort(1).values, r[1].sort(1).values) + mismatch_rate(
                          o[0].sort(1).values.long(), r[0].sort(1).values.long()), 1e-5,
                      bytes=logits.numel() * 4, shape=dict(t=s.tokens, experts=s.experts)))
    return cases


def attention_cases(b: Builder, s: Shapes) -> list[Case]:
    from ..kernels.indexer import QueryGroup
    from ..kernels.sparse_attention import KVIndex
    from ..kernels.triton import indexer, sparse_attn
    from ..kernels.triton.ref import attention as ref
    from ..kernels.kv_formats import FP8IndexerKeys

    cases = []
    t, e = s.tokens, s.entries
    keys = FP8IndexerKeys.empty(t * e, s.page_rows // 4, s.index_dim, device=b.device)
    keys.write(torch.arange(t * e, device=b.device), b.randn(t * e, s.index_dim, dtype=torch.float32))
    q = b.randn(t, s.index_heads, s.index_dim)
    w = b.randn(t, s.index_heads, dtype=torch.float32, std=s.index_heads ** -0.5)
    rows = torch.arange(t * e, device=b.device).view(t, e)
    visible = (e - torch.arange(t, device=b.device))[:, None]  # ragged visible counts
    group = QueryGroup(torch.arange(t, device=b.device)[:, None], rows, visible, visible.cpu().numpy())
    cases.append(Case("indexer.decode.fp8", lambda: indexer.indexer_topk(q, w, keys, [group], s.index_topk),
                      lambda: ref.indexer_topk(q, w, keys, [group], s.index_topk), topk_miss_rate, 1e-2,
                      bytes=t * e * (s.index_dim + 4), flops=2 * t * s.index_heads * e * s.index_dim,
                      shape=dict(t=t, heads=s.index_heads, entries=e, topk=s.index_topk)))
    chunk = s.prefill  # one request's prefill chunk ending at the full context: causal visibility
    qp, wp = b.randn(chunk, s.index_heads, s.index_dim), b.randn(chunk, s.index_heads, dtype=torch.float32)
    seen = (e - (chunk - 1 - torch.arange(chunk, device=b.device)) // 4)[None, :]
    prefill = QueryGroup(torch.arange(chunk, device=b.device)[None, :], rows[:1], seen, seen.cpu().numpy())
    cases.append(Case("indexer.prefill.fp8", lambda: indexer.indexer_topk(qp, wp, keys, [prefill], s.index_topk),
                      lambda: ref.indexer_topk(qp, wp, keys, [prefill], s.index_topk), topk_miss_rate, 1e-2,
                      bytes=e * (s.index_dim + 4) + qp.numel() * 2, flops=2 * chunk * s.index_heads * e * s.index_dim,
                      shape=dict(t=chunk, heads=s.index_heads, entries=e, topk=s.index_topk)))
    for name, tq in (("decode", t), ("prefill", s.prefill)):
        window = b.fp8_pool(tq + s.window, s.page_rows, s.head_dim)
        entries = b.fp8_pool(4 * s.index_topk, s.page_rows // 4, s.head_dim)
        qa = b.randn(tq, s.heads, s.head_dim)
        start = torch.arange(tq, device=b.device)[:, None]
        swa = KVIndex(start + torch.arange(s.window, device=b.device), torch.full((tq,), s.window, device=b.device))
        topk = KVIndex(b.randint(0, 4 * s.index_topk, tq, s.index_topk), b.randint(0, s.index_topk + 1, tq))
        sink = b.randn(s.heads, dtype=torch.float32)
        inverse = b.rope(torch.arange(tq, device=b.device) + 4096, s.rope_dim).conj_physical()
        args = (qa, window, swa, sink, s.head_dim ** -0.5, entries, topk, inverse)
        rows_read = tq * (s.window + s.index_topk)
        cases.append(Case(f"attention.{name}.csa.fp8", lambda a=args: sparse_attn.sparse_attention(*a),
                          lambda a=args: ref.sparse_attention(*a), max_rel_error, 3e-2,
                          bytes=rows_read * 584 + 2 * qa.numel() * 2, flops=4 * rows_read * s.heads * s.head_dim,
                          shape=dict(t=tq, heads=s.heads, rows=s.window + s.index_topk)))
    return cases


def small_op_cases(b: Builder, s: Shapes) -> list[Case]:
    from ..kernels import mhc as mhc_ref
    from ..kernels.triton import compressor, mhc, prologue, sampling
    from ..kernels.triton.ref import attention as ref
    from ..kernels.triton.ref import sampling as sampling_ref
    from ..kernels.kv_formats import FP8KVCache

    t, n, d = s.tokens, 4, s.hidden
    x, fn = b.randn(t, n, d), b.randn(24, n * d, dtype=torch.float32, std=0.02)
    scale, base = b.randn(3, dtype=torch.float32).abs(), b.randn(24, dtype=torch.float32, std=0.5)
    pre_args = (x, fn, scale, base, 1e-6, 1e-6, 20)
    _, post, comb = mhc_ref.hc_pre(*pre_args)
    f = b.randn(t, d)
    stream_bytes = x.numel() * 2
    cases = [Case("mhc.pre", lambda: mhc.hc_pre(*pre_args), lambda: mhc_ref.hc_pre(*pre_args), max_rel_error, 2e-2,
                  bytes=2 * stream_bytes + fn.numel() * 4, flops=2 * t * 24 * n * d, shape=dict(t=t, n=n, d=d)),
             Case("mhc.post", lambda: mhc.hc_post(f, x, post, comb), lambda: mhc_ref.hc_post(f, x, post, comb),
                  max_rel_error, 2e-2, bytes=2 * stream_bytes + f.numel() * 2, shape=dict(t=t, n=n, d=d))]
    q = b.randn(t, s.heads, s.head_dim)
    table = b.rope(torch.arange(t, device=b.device) * 7, s.rope_dim)
    cases.append(Case("prologue.q", lambda: prologue.norm_rope(q, None, 1e-6, table),
                      lambda: ref.norm_rope(q, None, 1e-6, table), max_rel_error, 2e-2, bytes=2 * q.numel() * 2,
                      shape=dict(t=t, heads=s.heads, d=s.head_dim)))

    def into_pool(fn: Callable, *args) -> Thunk:
        def run() -> torch.Tensor:
            pool = FP8KVCache.empty(2 * t, s.page_rows, device=b.device)
            fn(*args, pool, slots)
            return pool.read(slots.clamp(min=0))
        return run

    slots = torch.arange(t, device=b.device) * 2 - 1  # the first token is padding
    kv, weight = b.randn(t, s.head_dim), b.randn(s.head_dim, dtype=torch.float32).abs() + 0.5
    cases.append(Case("prologue.kv_insert.fp8", into_pool(prologue.kv_insert, kv, weight, 1e-6, table),
                      into_pool(ref.kv_insert, kv, weight, 1e-6, table), mean_rel_error, 1e-2,
                      bytes=kv.numel() * 2 + t * 584, shape=dict(t=t, d=s.head_dim)))
    for name, slots_per_entry in (("csa", 8), ("hca", s.hca_window)):
        rows = b.randn(t, slots_per_entry, 2, s.head_dim, dtype=torch.float32)
        ck, cs = rows[:, :, 0], rows[:, :, 1]
        cases.append(Case(f"compressor.{name}.fp8", into_pool(compressor.compress_close, ck, cs, weight, 1e-6, table),
                          into_pool(ref.compress_close, ck, cs, weight, 1e-6, table), mean_rel_error, 1e-2,
                          bytes=rows.numel() * 4 + t * 584, shape=dict(entries=t, slots=slots_per_entry)))
    logits = b.randn(t, s.vocab, dtype=torch.float32, std=3.0)
    temperature = torch.where(torch.arange(t, device=b.device) % 2 == 0, 0.0, 0.8)
    seeds, steps = b.randint(0, 2 ** 40, t), b.randint(0, 10_000, t)
    cases.append(Case("sampling", lambda: sampling.sample(logits, temperature, seeds, steps),
                      lambda: sampling_ref.sample(logits, temperature, seeds, steps), mismatch_rate, 1.5 / t,
                      bytes=logits.numel() * 4, shape=dict(b=t, vocab=s.vocab)))
    return cases


GROUPS = {"gemm": gemm_cases, "moe": moe_cases, "attention": attention_cases, "small": small_op_cases}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timer(device: torch.device) -> Callable[[Thunk], float]:
    """Milliseconds per call: triton's do_bench (median) on a GPU, one timed call elsewhere."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=10, rep=50, return_mode="median"))
    return lambda fn: gpu.timed(fn, device, repeats=1) * 1e3


def run_case(case: Case, device: torch.device, timer: Callable[[Thunk], float], copy_bw: float,
             mm_rate: float) -> dict:
    record = {"name": case.name, "shape": case.shape, "bytes": case.bytes, "flops": case.flops, "tol": case.tol}
    try:
        out = case.kernel()
        _sync(device)
        t0 = time.perf_counter()
        ref = case.reference()
        _sync(device)
        record["reference_ms"] = (time.perf_counter() - t0) * 1e3
        record["error"] = case.error(out, ref)
        record["ok"] = record["error"] <= case.tol
        kernel_ms = timer(case.kernel)
        roof = roofline_ms(case.bytes, case.flops, copy_bw, mm_rate)
        record.update(kernel_ms=kernel_ms, roofline_ms=roof, efficiency=roof / kernel_ms,
                      achieved_bytes_per_s=case.bytes / kernel_ms * 1e3,
                      achieved_flops_per_s=case.flops / kernel_ms * 1e3)
    except Exception as e:  # a kernel that does not compile or run is a result, not the end of the check
        record.update(ok=False, failure=f"{type(e).__name__}: {e}"[:2000])
    return record


def versions(device: torch.device) -> dict:
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
            "interpreter": os.environ.get("TRITON_INTERPRET", "0")}
    try:
        info["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                         cwd=os.path.dirname(__file__), timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["git_sha"] = "unknown"
    return info


def end_to_end(dry_run: bool, seed: int) -> dict:
    """`banyan bench gpu` (mid config; `--tiny` in the dry run), through its own argument parser."""
    parser = argparse.ArgumentParser()
    gpu.add_args(parser)
    sizes = ({**gpu.TINY_DEFAULTS, "batches": [1, 2], "steps": 2} if dry_run
             else {**gpu.FULL_DEFAULTS, "steps": 8, "prefill_len": 2048})
    argv = ["--batches", *map(str, sizes["batches"]), "--context", str(sizes["context"]), "--steps",
            str(sizes["steps"]), "--prefill-len", str(sizes["prefill_len"]), "--seed", str(seed)]
    return gpu.run_gpu(parser.parse_args(argv + (["--tiny"] if dry_run else [])))


def run(args: argparse.Namespace) -> int:
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run for the CPU interpreter check")
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = TINY if args.dry_run else FLASH
    if args.tokens:
        shapes = replace(shapes, tokens=args.tokens)
    from ..kernels import dispatch

    result = {"benchmark": "gpu_check", "versions": versions(device), "shapes": vars(shapes),
              "backends": dispatch.selected(device)}
    print(" ".join(f"{k}={v}" for k, v in result["versions"].items()), flush=True)
    big = not args.dry_run and device.type == "cuda"
    copy_bw = gpu.copy_bandwidth(device, (2 << 30) if big else (16 << 20))
    mm_rate = gpu.matmul_rate(device, torch.bfloat16 if big else torch.float32, 8192 if big else 256)
    result.update(copy_bandwidth_bytes_per_s=copy_bw, matmul_flops_per_s=mm_rate, cases=[])
    timer = _timer(device)
    for group in args.only or list(GROUPS):
        if time.perf_counter() - started > args.budget_s:
            result["cases"].append({"name": group, "ok": False, "failure": "skipped: over the time budget"})
            continue
        try:
            cases = GROUPS[group](Builder(device, args.seed), shapes)
        except Exception as e:
            result["cases"].append({"name": group, "ok": False, "failure": f"inputs: {type(e).__name__}: {e}"})
            continue
        for case in cases:
            record = run_case(case, device, timer, copy_bw, mm_rate)
            result["cases"].append(record)
            print(format_case(record), flush=True)
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.skip_e2e and time.perf_counter() - started > args.budget_s + E2E_RESERVE_S:
        result["end_to_end"] = {"failure": "skipped: over the time budget"}
    elif not args.skip_e2e:
        try:
            result["end_to_end"] = end_to_end(args.dry_run, args.seed)
            print(gpu.format_report(result["end_to_end"]), flush=True)
        except Exception as e:
            result["end_to_end"] = {"failure": f"{type(e).__name__}: {e}"[:2000]}
    result["elapsed_s"] = time.perf_counter() - started
    failed = [c["name"] for c in result["cases"] if not c.get("ok")]
    result["failed"] = failed
    print(f"{len(result['cases']) - len(failed)}/{len(result['cases'])} checks passed in {result['elapsed_s']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    save(args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None), result)
    return 1 if failed else 0


def format_case(r: dict) -> str:
    if "failure" in r:
        return f"{r['name']:<28} FAIL  {r['failure'].splitlines()[0][:160]}"
    status = "ok  " if r["ok"] else "FAIL"
    return (f"{r['name']:<28} {status}  err {r['error']:.2e} (tol {r['tol']:.0e})  {r['kernel_ms']:8.3f} ms  "
            f"roofline {r['roofline_ms']:8.3f} ms  eff {r['efficiency']:6.1%}  torch {r['reference_ms']:9.2f} ms")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="tiny shapes (on CPU: under the Triton interpreter)")
    p.add_argument("--only", nargs="+", choices=list(GROUPS), help="kernel groups to check (default: all)")
    p.add_argument("--tokens", type=int, default=None, help="decode batch of the kernel checks (default 64)")
    p.add_argument("--skip-e2e", action="store_true", help="no `banyan bench gpu` run")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="start no kernel group after this many seconds (the model benchmark: 30 s more)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON results file (default: $OUT/gpu_check.json when $OUT is set)")


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
