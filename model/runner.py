"""The model runner: runs one scheduled step on the network and samples from it.

The scheduler decides *what* runs: which requests, how many of their tokens, on which
pages. It describes a step as a list of `RunRequest`s, and the runner does the rest: it
owns the network and its paged state (`V4KVCache`), builds the step's `ForwardBatch`
(host lists and CPU tensors, moved to the device by the model in one copy), runs the
forward pass, samples the requests that are due a token and scores prompt tokens.

Where the next pieces plug in:
* CPU threads: `_forward` sets each step's intra-op thread count (`model.threads`).
* CUDA graphs: `_forward` is the one call that runs the network; a graph runner captures
  it per decode batch size and replays it when `requests` is a uniform decode batch.
* Tensor/expert parallelism: every rank holds a `ModelRunner` over its shard; the rank-0
  scheduler broadcasts the `RunRequest` list (plain data) and each rank calls `run`.
* MTP speculative decoding: a draft loop lives in `run`, around `_forward` (draft with the
  MTP layer, verify the drafts in one target forward, roll back rejected state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

import numpy as np
import torch

from . import threads
from .batch import ForwardBatch
from .kv_cache import CacheShape, V4KVCache
from .network import DeepseekV4
from .sampling import SamplingRow, first_argmax, sample, target_distribution
from .speculative import Verdict, verify_greedy, verify_rejection

__all__ = ["Drafter", "ModelRunner", "PromptScoring", "RunOutput", "RunRequest", "SamplingRow", "Speculation",
           "TokenHistory", "forward_batch"]


class Drafter(Protocol):
    """Proposes draft tokens for speculative decoding (see `model.drafters`)."""

    needs_streams: bool  # wants the target's pre-head streams of every token of the step

    def draft(self, requests: list["RunRequest"], outputs: list["RunOutput"], streams: torch.Tensor | None) -> None:
        """After a step: set `drafts` / `draft_probs` of the output of every request whose
        `speculation.next_k` asks for them, and keep whatever state the drafter needs."""
        ...


class TokenHistory(Sequence[int]):
    """A request's tokens by reference: a concatenation of the scheduler's own lists (prompt,
    output, a step's new tokens), not a copy. Building one per step costs O(1); a drafter that
    needs the tokens reads the part it needs (`tail`). Valid while the step runs: the scheduler
    appends to the output list afterwards."""

    def __init__(self, *parts: list[int]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = i + len(self) if i < 0 else i
        for part in self.parts:
            if 0 <= j < len(part):
                return part[j]
            j -= len(part)
        raise IndexError(i)

    def __add__(self, more: list[int]) -> "TokenHistory":
        return TokenHistory(*self.parts, more)

    def tail(self, n: int) -> list[int]:
        """The last `n` tokens (all of them when there are fewer)."""
        out: list[int] = []
        for part in reversed(self.parts):
            if len(out) >= n:
                break
            out[:0] = part[max(0, len(part) - (n - len(out))):]
        return out

    def tokens(self) -> list[int]:
        return [t for part in self.parts for t in part]


@dataclass
class Speculation:
    """A decoding request that verifies drafts this step and wants new ones after it."""

    key: str  # the request, for drafters that keep per-request state
    context: TokenHistory  # the request's tokens before this step's drafts (by reference, see TokenHistory)
    drafts: list[int] = field(default_factory=list)  # verified this step: `tokens[1:]`
    draft_probs: torch.Tensor | None = None  # [len(drafts), V], None: greedy drafts
    next_k: int = 0  # drafts to propose after this step (0: the drafter only follows along)
    following: int | None = None  # the token after this step's tokens, when known (mid-prompt chunks)


@dataclass
class PromptScoring:
    """Prompt-token logprobs a chunk must produce: chunk row `first_row + j` predicts
    `targets[j]` (the prompt token after it)."""

    first_row: int
    targets: list[int]
    top_k: int = 0


@dataclass
class RunRequest:
    """One request's share of a step."""

    slot: int  # compressor ring slot
    prefix_len: int  # tokens already in its state
    tokens: list[int]  # the new tokens to run
    pages: list[int]  # physical page of each logical page
    swa_pages: list[int | None]  # physical sliding-window page of each logical page (None: dropped)
    restore_page: int | None = None  # resume at `prefix_len` from this cached page's snapshot first
    sampling: SamplingRow | None = None  # sample a token after the last new token
    scoring: PromptScoring | None = None
    speculation: Speculation | None = None


@dataclass
class RunOutput:
    tokens: list[int] = field(default_factory=list)  # emitted: one sampled token, or kept drafts + one
    logprob: float | None = None  # of a single sampled token
    top_logprobs: list[tuple[int, float]] | None = None
    prompt_logprobs: list[float] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]]] | None = None
    accepted: int = 0  # drafts kept
    drafts: list[int] = field(default_factory=list)  # proposed for the next step
    draft_probs: torch.Tensor | None = None


class ModelRunner:
    def __init__(self, model: DeepseekV4, shape: CacheShape, drafter: Drafter | None = None,
                 kv_cache_dtype: str = "auto") -> None:
        """`kv_cache_dtype`: auto (the model's dtype) | bfloat16 | fp8_e4m3 (see `model.kv_cache`)."""
        self.model = model
        self.cfg = model.cfg
        self.kv = V4KVCache(model.cfg, shape, dtype=model.dtype, device=model.device, kv_cache_dtype=kv_cache_dtype)
        self.drafter = drafter

    @property
    def page_size(self) -> int:
        return self.kv.page_size

    def run(self, requests: list[RunRequest]) -> list[RunOutput]:
        """Run one step; one output per request, in order."""
        for r in requests:
            if r.restore_page is not None:
                self.kv.restore_compressor_state(r.slot, r.restore_page, r.prefix_len)
        all_logits = any(r.scoring is not None or _verifies(r) for r in requests)
        want_streams = self.drafter is not None and self.drafter.needs_streams
        logits, streams = self._forward(requests, all_logits, want_streams)
        outputs = [RunOutput() for _ in requests]
        ends, start = [], 0
        for r, out in zip(requests, outputs):
            rows = logits[start:start + len(r.tokens)] if all_logits else None
            if r.scoring is not None:
                out.prompt_logprobs, out.prompt_top_logprobs = _score(rows, r.scoring)
            if _verifies(r):
                verdict = _verify(rows, r.sampling, r.speculation)
                out.tokens, out.accepted = verdict.tokens, verdict.accepted
            start += len(r.tokens)
            ends.append(start - 1 if all_logits else len(ends))
        due = [i for i, r in enumerate(requests) if r.sampling is not None and not _verifies(r)]
        if due:
            rows = [ends[i] for i in due]
            picked = logits if rows == list(range(logits.shape[0])) else logits[rows]  # no copy in steady decode
            result = sample(picked, [requests[i].sampling for i in due])
            for j, i in enumerate(due):
                outputs[i].tokens = [result.tokens[j]]
                outputs[i].logprob = result.logprobs[j]
                outputs[i].top_logprobs = result.top_logprobs[j]
        if any(r.speculation is not None for r in requests):
            if self.drafter is None:
                raise RuntimeError("speculative decoding was asked for, but the runner has no drafter")
            self.drafter.draft(requests, outputs, streams)
        return outputs

    def _forward(self, requests: list[RunRequest], all_logits: bool, want_streams: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = forward_batch([(r.prefix_len, r.tokens, r.slot, r.pages, r.swa_pages) for r in requests], all_logits)
        threads.for_step(sum(len(r.tokens) * (r.prefix_len + len(r.tokens)) for r in requests))
        if want_streams:
            return self.model(batch, self.kv, return_streams=True)
        return self.model(batch, self.kv), None


def forward_batch(rows: list[tuple[int, list[int], int, list[int], list[int | None]]],
                  all_logits: bool = False) -> ForwardBatch:
    """A `ForwardBatch` from (prefix length, new tokens, ring slot, pages, SWA pages) per request,
    built on the host in a few calls (the model moves it to the device in one copy)."""
    width = max(len(pages) for _, _, _, pages, _ in rows)
    tables = np.zeros((2, len(rows), width), dtype=np.int64)  # [2, B, max_pages], 0-padded
    for i, (_, _, _, pages, swa) in enumerate(rows):
        tables[0, i, :len(pages)] = pages
        tables[1, i, :len(swa)] = [0 if s is None else s for s in swa]
    tables = torch.from_numpy(tables)
    return ForwardBatch(
        input_ids=torch.tensor([t for _, ids, _, _, _ in rows for t in ids], dtype=torch.long),
        prefix_lens=[prefix for prefix, _, _, _, _ in rows],
        extend_lens=[len(ids) for _, ids, _, _, _ in rows],
        req_slots=[slot for _, _, slot, _, _ in rows],
        page_table=tables[0],
        swa_page_table=tables[1],
        all_logits=all_logits,
    )


def _verifies(r: RunRequest) -> bool:
    return r.speculation is not None and bool(r.speculation.drafts) and r.sampling is not None


def _verify(rows: torch.Tensor, sampling: SamplingRow, spec: Speculation) -> Verdict:
    """Keep the drafts the target agrees with; `rows` `[1 + K, V]` are the target's logits at
    the last committed token and at each draft."""
    if sampling.greedy:
        return verify_greedy(first_argmax(rows).tolist(), spec.drafts)
    target = torch.stack([target_distribution(row, sampling) for row in rows])  # [1 + K, V]
    return verify_rejection(target, spec.drafts, spec.draft_probs, sampling.generator)


def _score(logits: torch.Tensor, scoring: PromptScoring) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Logprobs (and top alternatives) of `scoring.targets` under the chunk's logits `[n, V]`."""
    n = len(scoring.targets)
    if n == 0:
        return [], []
    logprobs = torch.log_softmax(logits[scoring.first_row:scoring.first_row + n], dim=-1)  # [n, V]
    targets = torch.tensor(scoring.targets, device=logprobs.device)
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
    if not scoring.top_k:
        return chosen, [[] for _ in range(n)]
    vals, ids = torch.topk(logprobs, scoring.top_k, dim=-1)
    return chosen, [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
