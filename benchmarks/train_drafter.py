"""Train the tiny model's MTP layer to predict the tiny target's own greedy continuations.

    python -m banyan.benchmarks.train_drafter OUT [--steps 150] [--prompts 4] [--new-tokens 64]

The target (`make_tiny`'s random model for `--seed`) stays fixed. Its greedy continuations of
random prompts are the data: at every continuation position `p` the MTP layer sees the
target's pre-head streams at `p` and the token at `p + 1`, and learns the token at `p + 2`
(cross-entropy through the shared head), which is what its first draft is asked for. Only the
MTP block's MoE (routed and shared experts, router) and its final norm train: the mHC kernels
mix streams with in-place ops that autograd cannot go through, and everything after them is
differentiable. The random tiny target's continuations of different prompts have little in
common, so what the layer learns is the continuations it saw (vLLM's "memorised text"
case); the loss on held-out prompts' continuations says how little carries over. OUT is a checkpoint (transformers layout, bf16, exact for the target) that
`banyan serve --speculative-algorithm mtp` and `Engine` load like any other.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..model.config import ModelConfig
from ..model.generate import greedy_generate
from ..model.kv_cache import CacheShape, LayerCache, V4KVCache
from ..model.make_tiny import tiny_state
from ..model.network import DeepseekV4
from ..model.runner import forward_batch
from .output import standalone
from .speculative import prompts as random_prompts, save_checkpoint

TRAINED = (".ffn.", ".norm.weight")  # suffix groups of the MTP tensors that train


def tiny_target(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> DeepseekV4:
    model = DeepseekV4(cfg, mtp=True)
    model.load_state_dict(state)
    return model.eval()


def continuations(target: DeepseekV4, prompts: list[list[int]], new_tokens: int) -> list[tuple[list[int], int]]:
    """(prompt + the target's greedy continuation, prompt length) for each prompt."""
    return [(p + greedy_generate(target, p, new_tokens), len(p)) for p in prompts]


def target_streams(target: DeepseekV4, seq: list[int]) -> torch.Tensor:
    """The target's pre-head streams `[L, n, D]` at every position of `seq`."""
    shape = _shape(target.cfg, len(seq))
    batch = forward_batch([(0, seq, 0, list(range(shape.num_pages)), list(range(shape.num_pages)))])
    _, streams = target(batch, V4KVCache(target.cfg, shape, dtype=target.dtype), return_streams=True)
    return streams.clone()  # a normal tensor (made in inference mode)


def _shape(cfg: ModelConfig, length: int) -> CacheShape:
    pages = -(-length // cfg.min_page_size)
    return CacheShape(cfg.min_page_size, pages, pages, 1)


def _drop_kernel_caches() -> None:
    """Empty the kernels' cached constant tensors: ones made under inference mode (every
    forward of the serving path) cannot take part in autograd."""
    for name, module in list(sys.modules.items()):
        if name.startswith("banyan.kernels"):
            for obj in list(vars(module).values()):
                if callable(getattr(obj, "cache_clear", None)):
                    obj.cache_clear()


def mtp_loss(student: DeepseekV4, seq: list[int], start: int, streams: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the MTP layer's first-draft prediction (token `p + 2` from streams at
    `p` and token `p + 1`) over the continuation positions of `seq` (from `start`)."""
    cfg = student.cfg
    shape = _shape(cfg, len(seq))
    pages = list(range(shape.num_pages))
    cache = LayerCache(cfg, cfg.num_layers, shape, student.dtype, torch.device("cpu"))
    batch = forward_batch([(0, seq[1:], 0, pages, pages)], all_logits=True)
    # forward_mtp without its inference_mode wrapper, so that gradients flow
    logits, _ = DeepseekV4.forward_mtp.__wrapped__(student, batch, cache, streams[:-1], shape.page_size)
    first = max(start - 2, 0)  # predictions of continuation tokens only
    return torch.nn.functional.cross_entropy(logits[first:len(seq) - 2], torch.tensor(seq[first + 2:]))


def train(out: str | Path, prompts: list[list[int]], held_out: list[list[int]], new_tokens: int, steps: int,
          seed: int = 0, lr: float = 1e-2, log=print) -> dict:
    """Fit the MTP layer to the continuations of `prompts`; `held_out` prompts' continuations
    measure how far that carries to text it never saw. Writes the checkpoint to `out`."""
    cfg = ModelConfig.preset("tiny")
    state = tiny_state(cfg, seed)
    target = tiny_target(cfg, state)
    data = continuations(target, prompts, new_tokens)
    unseen = continuations(target, held_out, new_tokens)
    streams = [target_streams(target, seq) for seq, _ in data + unseen]
    _drop_kernel_caches()
    student = tiny_target(cfg, state)
    for p in student.parameters():
        p.requires_grad_(False)
    params = {n: p for n, p in student.named_parameters() if n.startswith("mtp.") and any(t in n for t in TRAINED)}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=lr)

    def mean_loss(rows: list[tuple[list[int], int]], first: int) -> float:
        with torch.no_grad():
            return sum(mtp_loss(student, seq, start, streams[first + i]).item()
                       for i, (seq, start) in enumerate(rows)) / max(len(rows), 1)

    before = {"seen": mean_loss(data, 0), "unseen": mean_loss(unseen, len(data))}
    started = time.perf_counter()
    for step in range(steps):
        i = step % len(data)
        loss = mtp_loss(student, data[i][0], data[i][1], streams[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}")
    seconds = time.perf_counter() - started
    after = {"seen": mean_loss(data, 0), "unseen": mean_loss(unseen, len(data))}
    save_checkpoint({**state, **{n: p.detach().float() for n, p in params.items()}}, cfg, Path(out))
    log(f"first-draft loss, seen {before['seen']:.3f} -> {after['seen']:.3f}, "
        f"unseen {before['unseen']:.3f} -> {after['unseen']:.3f}; wrote {out}")
    return {"steps": steps, "sequences": len(data), "continuation_tokens": new_tokens, "train_seconds": seconds,
            "loss_before": before, "loss_after": after, "trained_tensors": sorted(params)}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompts", type=int, default=4, help="random prompts whose continuations are the data")
    p.add_argument("--held-out", type=int, default=2, help="random prompts to measure unseen text on")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="make_tiny seed of the target")
    p.add_argument("--lr", type=float, default=1e-2)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    prompts = random_prompts(args.prompts + args.held_out, args.prompt_len, args.seed + 7)
    train(args.out, prompts[:args.prompts], prompts[args.prompts:], args.new_tokens, args.steps, args.seed, args.lr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
