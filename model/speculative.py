"""Verification of drafted tokens (speculative decoding), lossless by construction.

A drafter proposes `K` tokens after a request's last token; the target model scores all
`K + 1` positions in one forward. Greedy requests keep drafts while they equal the target's
argmax. Sampled requests use rejection sampling (Leviathan et al., arXiv 2211.17192): draft
`d` at position `i` is kept with probability `min(1, p_i(d) / q_i(d))`; the first rejected
position emits a draw from the normalised residual `max(p_i - q_i, 0)`, and when every draft
is kept a bonus token is drawn from `p_K`. The emitted tokens are then distributed exactly as
if each had been sampled from the target. A drafter that reports no probabilities (greedy
drafts) is a one-hot `q`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Verdict:
    accepted: int  # drafts kept
    tokens: list[int]  # what the request emits: the kept drafts, then one target token


def verify_greedy(target_argmax: list[int], drafts: list[int]) -> Verdict:
    """`target_argmax`: the target's greedy pick at each of the `K + 1` positions."""
    if len(target_argmax) != len(drafts) + 1:
        raise ValueError(f"{len(drafts)} drafts need {len(drafts) + 1} target positions, got {len(target_argmax)}")
    kept = 0
    while kept < len(drafts) and drafts[kept] == target_argmax[kept]:
        kept += 1
    return Verdict(kept, drafts[:kept] + [target_argmax[kept]])


def verify_rejection(target_probs: torch.Tensor, drafts: list[int], draft_probs: torch.Tensor | None,
                     generator: torch.Generator | None = None) -> Verdict:
    """Rejection sampling of `drafts` against the target.

    target_probs: `[K + 1, V]` the target's sampling distribution at each position (after
    temperature, top-k/p, min-p). draft_probs: `[K, V]` the distribution each draft was drawn
    from, or None for greedy (one-hot) drafts. Draws use `generator` (CPU)."""
    k = len(drafts)
    if target_probs.shape[0] != k + 1 or (draft_probs is not None and draft_probs.shape[0] != k):
        raise ValueError(f"{k} drafts need [{k + 1}, V] target and [{k}, V] draft probabilities")
    p = target_probs.float().cpu()
    q = None if draft_probs is None else draft_probs.float().cpu()
    for i, d in enumerate(drafts):
        q_d = 1.0 if q is None else float(q[i, d])
        p_d = float(p[i, d])
        if q_d > 0 and float(torch.rand((), generator=generator)) * q_d < p_d:
            continue
        residual = p[i].clone()
        if q is None:
            residual[d] = 0.0
        else:
            residual = (residual - q[i]).clamp_(min=0.0)
        if float(residual.sum()) <= 0:  # p == q up to rounding: any draw from p is exact
            residual = p[i]
        token = int(torch.multinomial(residual, 1, generator=generator))
        return Verdict(i, drafts[:i] + [token])
    bonus = int(torch.multinomial(p[k], 1, generator=generator))
    return Verdict(k, list(drafts) + [bonus])
