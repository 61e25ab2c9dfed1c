"""Speculative decoding benchmark: K = 0 (off), 1, 2, 3 drafts per step with the MTP drafter.

    banyan bench speculative [--drafter perfect|trained|DIR ...] [--k 0 1 2 3] [--out results/speculative.json]

Every (drafter, K) builds the scheduler exactly as `banyan serve` does (`build_scheduler`:
pools sized from the budget, rings of `window + K - 1` rows, the MTP drafter) and decodes
`--prompts` greedy batch-1 requests of `--new-tokens` tokens in process, each prompt with
every K in turn (load drift on a shared machine then hits every K alike). It reports decode
tokens/s (tokens after the first over the time after the first), target forwards per
emitted token (scheduler steps, each one target forward, over tokens; prefill included),
the mean tokens per verify step, and acceptance per draft position (kept drafts at that
position over the verify steps that had a draft there: the last step of a request may have
fewer than K). Runs use `--threads` intra-op threads (default 1: steadier on a shared machine).

Drafters:
* `perfect`: a tiny checkpoint whose continuations the MTP layer predicts exactly. Every
  block's output projections (attention `wo_b`, expert and shared-expert `w2`) are zero, so
  the streams stay proportional to the current token's embedding (mHC's mixing matrices
  are positive) and the target's next token is a fixed function of the current one; the MTP
  layer gets `e_proj = I`, `h_proj = 0` and the target's own `hc_head`/`norm`, so its
  prediction for the token after its input token is that same function. Costs are those of
  the real network (the same shapes run; only the values are special).
* `trained`: `benchmarks/train_drafter.py` run first (CPU, minutes) on the random tiny target's
  continuations of the benchmark's prompts; reported on those prompts and on unseen ones.
* a directory: any checkpoint with an MTP layer.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..model.config import ModelConfig
from ..model.make_tiny import tiny_state, transformers_tensors
from ..runtime.options import EngineOptions
from ..runtime.scheduler_process import build_scheduler
from ..scheduler.request import Request
from ..scheduler.sampling_params import SamplingParams
from .output import save, standalone

BLOCK_OUTPUTS = ("attn.wo_b.weight", "ffn.experts.w2", "ffn.shared_experts.w2.weight")


def save_checkpoint(state: dict[str, torch.Tensor], cfg: ModelConfig, out: Path) -> Path:
    """Write float32 official-name tensors as a transformers-layout checkpoint (bf16, which
    holds `make_tiny`'s rounded values exactly)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in transformers_tensors(state, cfg).items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg.replace(expert_dtype=None, quantization=None).to_hf_dict()))
    return out


def predictable_checkpoint(out: Path, seed: int = 0) -> Path:
    """The `perfect` drafter's checkpoint (see the module docstring)."""
    cfg = ModelConfig.preset("tiny")
    state = tiny_state(cfg, seed)
    for name, t in state.items():
        if name.endswith(BLOCK_OUTPUTS):
            state[name] = torch.zeros_like(t)
    d = cfg.hidden_size
    state["mtp.0.e_proj.weight"] = torch.eye(d)
    state["mtp.0.h_proj.weight"] = torch.zeros(d, d)
    state["mtp.0.enorm.weight"] = torch.ones(d)
    for name in ("norm.weight", "hc_head_fn", "hc_head_base", "hc_head_scale"):
        state[f"mtp.0.{name}"] = state[name].clone()
    return save_checkpoint(state, cfg, out)


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 128000) for _ in range(length)] for _ in range(n)]


def _scheduler(model_path: str, k: int, kv_cache_bytes: int):
    """The scheduler `banyan serve` builds, batch 1, with K drafts per step (0: no speculation)."""
    opts = EngineOptions(model_path=model_path, dtype="float32", device="cpu", max_running_requests=1,
                         kv_cache_bytes=kv_cache_bytes, chunked_prefill_size=512,
                         speculative_algorithm="mtp" if k else None, speculative_num_draft_tokens=max(k, 1))
    return build_scheduler(opts)[0]


def _decode(sched, rid: str, ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    """Greedy output of one request alone and the seconds after its first token."""
    req = Request(rid, ids, SamplingParams(max_new_tokens=new_tokens, temperature=0, ignore_eos=True))
    sched.add(req)
    first = None
    while sched.has_work():
        sched.step()
        if first is None and req.output_ids:
            first = time.perf_counter()
    return req.output_ids, time.perf_counter() - first


def _counts(sched) -> list:
    st = sched.stats
    return [st.steps, st.spec_verify_steps, list(st.spec_accepted_at), list(st.spec_drafted_at)]


def measure(model_path: str, ks: list[int], batch: list[list[int]], new_tokens: int, kv_cache_bytes: int) -> list[dict]:
    """Decode each prompt alone with every K in turn (so that a machine's load drifts over all K
    alike), after one warm-up request per K."""
    scheds = {k: _scheduler(model_path, k, kv_cache_bytes) for k in ks}
    for k, sched in scheds.items():
        _decode(sched, "warm-up", batch[0], new_tokens)
    start = {k: _counts(sched) for k, sched in scheds.items()}
    seconds, outputs = dict.fromkeys(ks, 0.0), {k: [] for k in ks}
    for i, ids in enumerate(batch):
        for k, sched in scheds.items():
            out, s = _decode(sched, f"r{i}", ids, new_tokens)
            outputs[k].append(out)
            seconds[k] += s
    return [_result(k, _counts(scheds[k]), start[k], outputs[k], seconds[k]) for k in ks]


def _result(k: int, now: list, then: list, outputs: list[list[int]], seconds: float) -> dict:
    steps, verify = now[0] - then[0], now[1] - then[1]
    accepted_at, drafted_at = (_since(a, b) for a, b in ((now[2], then[2]), (now[3], then[3])))
    tokens = sum(len(o) for o in outputs)
    decode_tokens = tokens - len(outputs)  # after each request's first
    return {
        "k": k, "requests": len(outputs), "tokens": tokens,
        "decode_tok_s": decode_tokens / seconds,
        "target_forwards": steps,
        "target_forwards_per_token": steps / tokens,
        "verify_steps": verify,
        "tokens_per_verify_step": (decode_tokens / verify) if verify else None,
        "acceptance_per_position": [a / d for a, d in zip(accepted_at, drafted_at) if d],
        "outputs": outputs,
    }


def _since(now: list[int], then: list[int]) -> list[int]:
    return [a - (then[i] if i < len(then) else 0) for i, a in enumerate(now)]


def bench_drafter(name: str, path: str, ks: list[int], batch: list[list[int]], args: argparse.Namespace) -> dict:
    runs = measure(path, ks, batch, args.new_tokens, int(args.kv_cache_gb * (1 << 30)))
    base = next((r for r in runs if r["k"] == 0), None)
    for r in runs:
        if base is not None:
            r["speedup_vs_k0"] = r["decode_tok_s"] / base["decode_tok_s"]
            r["same_output_as_k0"] = r["outputs"] == base["outputs"]
    for r in runs:
        del r["outputs"]
    return {"drafter": name, "model_path": path, "runs": runs}


def drafters(name: str, workdir: Path, batch: list[list[int]], args: argparse.Namespace,
             log=print) -> list[tuple[str, str, list[list[int]]]]:
    """(label, checkpoint, prompts) to benchmark for `--drafter name`. `trained` trains on the
    benchmark's prompts first, then runs on them and on as many prompts it never saw."""
    if name == "perfect":
        return [("perfect", str(predictable_checkpoint(workdir / "perfect", args.seed)), batch)]
    if name == "trained":
        from .train_drafter import train

        out, unseen = workdir / "trained", prompts(len(batch), args.prompt_len, args.seed + 8)
        args.training = train(out, batch, unseen, args.new_tokens, args.train_steps, args.seed, log=log)
        return [("trained, seen prompts", str(out), batch), ("trained, unseen prompts", str(out), unseen)]
    return [(name, name, batch)]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drafter", nargs="+", default=["perfect", "trained"],
                   help="perfect, trained (runs train_drafter first) or checkpoint directories")
    p.add_argument("--k", type=int, nargs="+", default=[0, 1, 2, 3], help="drafts per step (0: off)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--kv-cache-gb", type=float, default=0.05)
    p.add_argument("--train-steps", type=int, default=150, help="for --drafter trained")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workdir", default=None, help="where the generated checkpoints go (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON results file")


def run(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    batch = prompts(args.prompts, args.prompt_len, args.seed + 7)
    args.training = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        results = []
        for name in args.drafter:
            for label, path, ids in drafters(name, workdir, batch, args):
                results.append(bench_drafter(label, path, args.k, ids, args))
    result = {"benchmark": "speculative", "config": {"prompts": args.prompts, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                         "k": args.k, "threads": torch.get_num_threads()},
              "training": args.training, "drafters": results}
    for d in results:
        for r in d["runs"]:
            acc = ", ".join(f"{a:.2f}" for a in r["acceptance_per_position"])
            print(f"{d['drafter']:>24} K={r['k']}: {r['decode_tok_s']:7.1f} decode tok/s, "
                  f"{r['target_forwards_per_token']:.3f} target forwards/token, acceptance [{acc}]")
    save(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
