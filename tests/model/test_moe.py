"""Routed experts through `dispatch.fused_moe`: the torch backend's dense (small batches) and
grouped strategies against a per-token loop, and the gate's two routing modes."""

import pytest
import torch
import torch.nn.functional as F

from banyan.kernels import native
from banyan.kernels.triton.ref import moe as torch_moe
from banyan.model.config import ModelConfig
from banyan.model.moe import Experts, Gate


def loop_reference(experts: Experts, x, idx, weights):
    out = torch.zeros_like(x, dtype=torch.float64)
    for t in range(x.shape[0]):
        for e, w in zip(idx[t].tolist(), weights[t].tolist()):
            h = torch_moe.swiglu(x[t] @ experts.w1[e].T, x[t] @ experts.w3[e].T, experts.limit)
            out[t] += w * (h @ experts.w2[e].T).double()
    return out


@pytest.mark.parametrize("tokens", [1, 3, 200])
def test_dispatch_matches_a_loop_over_tokens(tokens, monkeypatch):
    monkeypatch.setenv("BANYAN_KERNELS", "torch")
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
    w = (experts.w1.data, experts.w3.data, experts.w2.data)
    for path in (torch_moe._dense, torch_moe._grouped):
        assert torch.allclose(path(x, idx, weights, *w, experts.limit).double(), expected, atol=1e-5)
    native_out = native.moe_experts(x, idx, weights, *w, experts.limit)  # what few tokens take on CPU
    assert (native_out is not None) == (tokens <= native.MOE_MAX_TOKENS and native.library() is not None)
    if native_out is not None:
        assert torch.allclose(native_out.double(), expected, atol=1e-5)
    dense = tokens * experts.w1[0].numel() * cfg.n_routed_experts <= torch_moe.DENSE_MACS
    assert dense == (tokens < 200)  # the tiny model's batches of 1 and 3 take the dense path
    assert torch.allclose(experts(x, idx, weights).double(), expected, atol=1e-5)
    assert torch.allclose(experts(x, idx.int(), weights).double(), expected, atol=1e-5)  # Triton's int32 ids


@pytest.mark.parametrize("hashed", [False, True])
def test_gate_routes_by_bias_or_token_table(hashed, monkeypatch):
    monkeypatch.setenv("BANYAN_KERNELS", "torch")
    cfg = ModelConfig.preset("tiny")
    gen = torch.Generator().manual_seed(7)
    gate = Gate(cfg, hashed, torch.float32)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(gate.weight.shape, generator=gen))
        if hashed:
            gate.tid2eid.copy_(torch.randint(0, cfg.n_routed_experts, gate.tid2eid.shape, generator=gen))
        else:
            gate.bias.copy_(torch.randn(cfg.n_routed_experts, generator=gen))
    x, input_ids = torch.randn(5, cfg.hidden_size, generator=gen), torch.randint(0, cfg.vocab_size, (5,), generator=gen)
    idx, weights = gate(x, input_ids)
    scores = torch.sqrt(F.softplus(x @ gate.weight.T))
    expected = gate.tid2eid[input_ids] if hashed else (scores + gate.bias).topk(cfg.num_experts_per_tok).indices
    assert torch.equal(idx.sort(1).values, expected.sort(1).values)
    chosen = scores.gather(1, idx)
    assert torch.allclose(weights, chosen / chosen.sum(-1, keepdim=True) * cfg.routed_scaling_factor, atol=1e-6)
