"""Routed experts: the dense (small batches) and grouped dispatches against a per-token loop."""

import pytest
import torch

from banyan.model.config import ModelConfig
from banyan.model.moe import DENSE_MACS, Experts, swiglu


def loop_reference(experts: Experts, x, idx, weights):
    out = torch.zeros_like(x, dtype=torch.float64)
    for t in range(x.shape[0]):
        for e, w in zip(idx[t].tolist(), weights[t].tolist()):
            y = swiglu(x[t:t + 1], experts.w1[e], experts.w3[e], experts.w2[e], experts.limit)
            out[t] += w * y[0].double()
    return out


@pytest.mark.parametrize("tokens", [1, 3, 200])
def test_dispatch_matches_a_loop_over_tokens(tokens):
    cfg = ModelConfig.preset("tiny")
    gen = torch.Generator().manual_seed(tokens)
    experts = Experts(cfg, torch.float32)
    with torch.no_grad():
        for w in (experts.w1, experts.w3, experts.w2):
            w.copy_(torch.randn(w.shape, generator=gen) * 0.3)  # large enough to hit the clamps
    x = torch.randn(tokens, cfg.hidden_size, generator=gen)
    scores = torch.rand(tokens, cfg.n_routed_experts, generator=gen)
    idx = scores.topk(cfg.num_experts_per_tok).indices
    weights = torch.rand(tokens, cfg.num_experts_per_tok, generator=gen)
    expected = loop_reference(experts, x, idx, weights)
    for path in (experts._dense, experts._grouped):
        assert torch.allclose(path(x, idx, weights).double(), expected, atol=1e-5)
    dense = tokens * experts.w1[0].numel() * cfg.n_routed_experts <= DENSE_MACS
    assert dense == (tokens < 200)  # the tiny model's batches of 1 and 3 take the dense path
    assert torch.allclose(experts(x, idx, weights).double(), expected, atol=1e-5)
