"""Sync-free sampling: the kernel equals the torch reference bit for bit, and the reference
draws from softmax(logits / T)."""

from __future__ import annotations

import torch

from banyan.kernels import dispatch
from banyan.kernels.triton.ref.sampling import hash_uniform, sample


def test_the_kernel_draws_the_reference_tokens(monkeypatch, gen):
    monkeypatch.setenv("BANYAN_KERNELS", "triton")
    logits = torch.randn(7, 1000, generator=gen) * 2
    logits[0, 10] = logits[0, 900] = 50.0  # a greedy tie: the first maximum wins
    temperature = torch.tensor([0.0, 1.0, 0.7, 0.0, 2.0, 1.0, 1e-3])
    seeds = torch.tensor([1, 2, 3, 4, 2 ** 40 + 7, -5, 9])
    steps = torch.tensor([0, 5, 9, 1, 3, 100, 2])
    tokens = dispatch.sample(logits, temperature, seeds, steps)
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, sample(logits, temperature, seeds, steps))
    assert tokens[0] == 10 and tokens[3] == logits[3].argmax() and tokens[6] == logits[6].argmax()


def test_draws_follow_the_softmax():
    n = 4096
    probs = torch.tensor([0.05, 0.15, 0.3, 0.5])
    logits = torch.log(probs).repeat(n, 1) * 2  # at T = 2 the distribution is `probs` again
    tokens = sample(logits, torch.full((n,), 2.0), torch.arange(n), torch.zeros(n, dtype=torch.long))
    counts = torch.bincount(tokens, minlength=4).float()
    chi2 = ((counts - n * probs) ** 2 / (n * probs)).sum()
    assert chi2 < 16.3  # p = 0.001 at 3 degrees of freedom


def test_a_new_step_or_seed_redraws():
    logits = torch.zeros(1, 5000)
    one = lambda seed, step: int(sample(logits, torch.ones(1), torch.tensor([seed]), torch.tensor([step])))
    assert one(3, 7) == one(3, 7)
    assert len({one(3, step) for step in range(8)}) > 1 and len({one(seed, 7) for seed in range(8)}) > 1


def test_uniforms_are_open_and_flat():
    u = hash_uniform(torch.tensor(11), torch.tensor(0), torch.arange(200_000))
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
