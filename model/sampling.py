"""Token sampling for a batch of requests with per-request parameters.

Order: logit bias, penalties, token mask -> logprobs (what is reported) -> temperature,
top-k, top-p, min-p -> draw with the request's generator (or argmax when greedy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingRow:
    """What the sampler needs from one request."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    allowed: torch.Tensor | None = None  # bool [V]: the only tokens that may be sampled
    banned: list[int] = field(default_factory=list)  # tokens that may not be sampled (min_new_tokens)
    top_logprobs: int = 0


@dataclass
class SampleResult:
    tokens: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]


def _needs_adjustment(row: SamplingRow) -> bool:
    return bool(row.logit_bias or row.presence_penalty or row.frequency_penalty or row.repetition_penalty != 1.0
                or row.allowed is not None or row.banned)


def _apply_penalties(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    """Bias, penalties and masks for one row, in place."""
    if row.logit_bias:
        ids = torch.tensor(list(row.logit_bias), device=logits.device)
        logits[ids] += torch.tensor(list(row.logit_bias.values()), device=logits.device)
    if row.output_ids and (row.presence_penalty or row.frequency_penalty):
        counts = torch.bincount(torch.tensor(row.output_ids, device=logits.device), minlength=logits.numel())
        logits -= row.frequency_penalty * counts + row.presence_penalty * (counts > 0)
    if row.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.output_ids)), dtype=torch.long, device=logits.device)
        if seen.numel():
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / row.repetition_penalty, vals * row.repetition_penalty)
    if row.allowed is not None:
        logits.masked_fill_(~row.allowed.to(logits.device), float("-inf"))
    if row.banned:
        logits[torch.tensor(row.banned, device=logits.device)] = float("-inf")
    return logits


def _truncate(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    logits = logits / row.temperature
    if row.top_k > 0 and row.top_k < logits.numel():
        kth = torch.topk(logits, row.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if row.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = (torch.cumsum(sorted_probs, 0) - sorted_probs) >= row.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    if row.min_p > 0:
        probs = probs.masked_fill(probs < row.min_p * probs.max(), 0.0)
    return probs


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SampleResult:
    """`logits` `[B, V]` fp32, one row per request. Log-softmax, greedy picks and top
    alternatives run on the whole batch; only rows with penalties, masks or random
    sampling are handled one by one."""
    logits = logits.clone()
    for i, row in enumerate(rows):
        if _needs_adjustment(row):
            _apply_penalties(logits[i], row)
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = torch.argmax(logits, dim=-1)
    for i, row in enumerate(rows):
        if not (row.temperature == 0 or row.top_k == 1):
            probs = _truncate(logits[i], row)
            tokens[i] = int(torch.multinomial(probs.cpu(), 1, generator=row.generator))
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    k = max(row.top_logprobs for row in rows)
    tops: list[list[tuple[int, float]]] = [[] for _ in rows]
    if k:
        vals, ids = torch.topk(logprobs, k, dim=-1)
        vals, ids = vals.tolist(), ids.tolist()
        tops = [list(zip(ids[i][:row.top_logprobs], vals[i][:row.top_logprobs])) for i, row in enumerate(rows)]
    return SampleResult(tokens.tolist(), chosen.tolist(), tops)
