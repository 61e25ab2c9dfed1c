"""Draft verification: greedy identity and the rejection sampler's exactness (chi-squared)."""

from __future__ import annotations

import pytest
import torch

from banyan.model.speculative import verify_greedy, verify_rejection

CHI2_CRITICAL_DF7_ALPHA_1E3 = 24.322  # chi-squared quantile, 7 degrees of freedom, p = 0.999
V = 8


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was emitted"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def random_dist(gen: torch.Generator, zero: list[int] = ()) -> torch.Tensor:
    p = torch.rand(V, generator=gen) + 0.05
    p[list(zero)] = 0
    return p / p.sum()


def test_greedy_keeps_drafts_until_the_first_mismatch():
    assert verify_greedy([5, 6, 7, 8], [5, 6, 7]).tokens == [5, 6, 7, 8]  # all kept plus the bonus
    assert verify_greedy([5, 6, 7, 8], [5, 9, 7]).accepted == 1
    assert verify_greedy([5, 6, 7, 8], [5, 9, 7]).tokens == [5, 6]
    assert verify_greedy([4], []).tokens == [4]
    with pytest.raises(ValueError, match="target positions"):
        verify_greedy([1, 2], [1, 2])


@pytest.mark.parametrize("case", ["overlapping", "disjoint", "one-hot"])
def test_rejection_sampling_emits_the_target_distribution(case):
    gen = torch.Generator().manual_seed({"overlapping": 1, "disjoint": 2, "one-hot": 3}[case])
    p = torch.stack([random_dist(gen, zero=[0, 1] if case == "disjoint" else []), random_dist(gen)])
    q = random_dist(gen, zero=[2, 3, 4, 5, 6, 7] if case == "disjoint" else []).unsqueeze(0)
    first, second = torch.zeros(V), torch.zeros(V)
    draws = torch.Generator().manual_seed(99)
    for _ in range(20_000):
        draft = int(torch.multinomial(q[0], 1, generator=draws)) if case != "one-hot" else 3
        verdict = verify_rejection(p, [draft], None if case == "one-hot" else q, draws)
        first[verdict.tokens[0]] += 1
        if verdict.accepted == 1:
            second[verdict.tokens[1]] += 1  # the bonus token after a kept draft
    assert chi2(first, p[0]) < CHI2_CRITICAL_DF7_ALPHA_1E3
    assert chi2(second, p[1]) < CHI2_CRITICAL_DF7_ALPHA_1E3


def test_a_biased_sampler_fails_the_same_check():
    """The check has power: emitting the draft unconditionally gives q, not p."""
    gen = torch.Generator().manual_seed(5)
    p, q = random_dist(gen), random_dist(gen)
    counts = torch.bincount(torch.multinomial(q, 20_000, replacement=True, generator=gen), minlength=V).float()
    assert chi2(counts, p) > CHI2_CRITICAL_DF7_ALPHA_1E3


def test_rejection_sampling_is_reproducible_with_a_seed_and_checks_shapes():
    gen = torch.Generator().manual_seed(0)
    p = torch.stack([random_dist(gen) for _ in range(3)])
    q = torch.stack([random_dist(gen) for _ in range(2)])
    a = verify_rejection(p, [1, 2], q, torch.Generator().manual_seed(7))
    b = verify_rejection(p, [1, 2], q, torch.Generator().manual_seed(7))
    assert a == b and len(a.tokens) == a.accepted + 1
    with pytest.raises(ValueError, match="drafts need"):
        verify_rejection(p, [1], q)
