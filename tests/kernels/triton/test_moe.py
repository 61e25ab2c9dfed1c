"""Routing and the fused routed experts against per-expert fp32 loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from banyan.kernels import dispatch
from banyan.kernels.quant import QuantizedWeight, quantize_fp4, quantize_fp8

E, D, I, TOPK, LIMIT = 8, 128, 96, 3, 10.0


def _experts(gen: torch.Generator, fmt: str, n: int, k: int) -> QuantizedWeight:
    dense = torch.randn(E, n, k, generator=gen) * 0.15
    if fmt == "dense":
        return QuantizedWeight(dense.to(torch.bfloat16))
    quantize = quantize_fp8 if fmt == "fp8" else quantize_fp4
    parts = [quantize(w) for w in dense]
    return QuantizedWeight(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]), fmt)


def _oracle(x, ids, weights, w1, w3, w2):
    """One expert at a time in fp32: sum_k w_k * W2(silu(min(W1 x, 10)) * clamp(W3 x, +-10))."""
    out = torch.zeros(x.shape[0], D)
    for e in range(E):
        tokens, slot = (ids == e).nonzero(as_tuple=True)
        if len(tokens):
            xe = x[tokens].float()
            gate = (xe @ w1[e].dequantize().T).clamp(max=LIMIT)
            up = (xe @ w3[e].dequantize().T).clamp(-LIMIT, LIMIT)
            out.index_add_(0, tokens, weights[tokens, slot, None] * ((F.silu(gate) * up) @ w2[e].dequantize().T))
    return out


def _routing(gen: torch.Generator, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.stack([torch.randperm(E, generator=gen)[:TOPK] for _ in range(t)])
    ids[: t // 2, 0] = 5  # one busy expert: its slots span more than one 16-row block
    ids[ids == 6] = 7  # and one expert no token uses
    return ids.to(torch.int32), torch.rand(t, TOPK, generator=gen)


@pytest.mark.parametrize("fmt", ["dense", "fp8", "fp4"])
def test_fused_moe_matches_the_per_expert_loop(backend, gen, fmt):
    t = 37  # 111 slots: not a multiple of any block
    x = (torch.randn(t, D, generator=gen)).to(torch.bfloat16)
    ids, weights = _routing(gen, t)
    w1, w3, w2 = _experts(gen, fmt, I, D), _experts(gen, fmt, I, D), _experts(gen, fmt, D, I)
    out = dispatch.fused_moe(x, ids, weights, w1, w3, w2, LIMIT)
    expected = _oracle(x, ids, weights, w1, w3, w2)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_fp4_decoded_in_registers_equals_dot_scaled(gen):
    from banyan.kernels.triton.moe import fused_moe

    x = torch.randn(6, D, generator=gen).to(torch.bfloat16)
    ids, weights = _routing(gen, 6)
    w1, w3, w2 = _experts(gen, "fp4", I, D), _experts(gen, "fp4", I, D), _experts(gen, "fp4", D, I)
    scaled = fused_moe(x, ids, weights, w1, w3, w2, LIMIT, fp4_dot_scaled=True)
    decoded = fused_moe(x, ids, weights, w1, w3, w2, LIMIT, fp4_dot_scaled=False)
    assert torch.equal(scaled, decoded)


def test_fp8_experts_with_fp32_scales(gen):
    """Base checkpoints carry fp32 block scales: the same product as with their E8M0 bytes."""
    from banyan.kernels.triton.moe import fused_moe

    x = torch.randn(5, D, generator=gen).to(torch.bfloat16)
    ids, weights = _routing(gen, 5)
    w1, w3, w2 = _experts(gen, "fp8", I, D), _experts(gen, "fp8", I, D), _experts(gen, "fp8", D, I)
    as_fp32 = [QuantizedWeight(w.data, w.scale.float(), "fp8") for w in (w1, w3, w2)]
    assert torch.equal(fused_moe(x, ids, weights, *as_fp32, LIMIT), fused_moe(x, ids, weights, w1, w3, w2, LIMIT))


def test_swiglu_clamps_bite(gen):
    """Large activations: the gate's upper clamp and the up-projection's two-sided clamp are active."""
    from banyan.kernels.triton.moe import fused_moe

    x = (torch.randn(4, D, generator=gen) * 8).to(torch.bfloat16)
    ids, weights = _routing(gen, 4)
    w1, w3, w2 = _experts(gen, "fp8", I, D), _experts(gen, "fp8", I, D), _experts(gen, "fp8", D, I)
    gate = x.float() @ w1[int(ids[0, 0])].dequantize().T
    assert (gate > LIMIT).any() and (gate < -LIMIT).any()
    expected = _oracle(x, ids, weights, w1, w3, w2)
    out = fused_moe(x, ids, weights, w1, w3, w2, LIMIT)
    assert torch.allclose(out.float(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_align_places_every_slot_once_in_its_experts_blocks(gen):
    from banyan.kernels.triton.moe import align

    ids, _ = _routing(gen, 21)
    sorted_slots, block_expert = align(ids, E, 16)
    slots = ids.numel()
    assert len(sorted_slots) == len(block_expert) * 16 >= slots + E * 15  # the worst case, fixed by T
    real = sorted_slots[sorted_slots < slots].long()
    assert sorted(real.tolist()) == list(range(slots))
    owner = block_expert.repeat_interleave(16)
    assert torch.equal(owner[sorted_slots < slots].long(), ids.flatten().long()[real])
    assert torch.equal(block_expert, block_expert.sort().values)  # experts in order, E (none) at the end
    assert int((block_expert < E).sum()) == sum(-(-int((ids == e).sum()) // 16) for e in range(E))


def test_route_matches_biased_top_k(backend, gen):
    logits = torch.randn(37, 48, generator=gen) * 3
    logits[0, 0] = 30.0  # past softplus' linear threshold
    bias = torch.randn(48, generator=gen) * 0.1
    ids, weights = dispatch.route(logits, bias, 6, 1.5)
    scores = torch.sqrt(F.softplus(logits))
    expected = torch.topk(scores + bias, 6, dim=-1).indices
    assert torch.equal(ids.sort(1).values.long(), expected.sort(1).values)
    chosen = scores.gather(1, ids.long())
    assert torch.allclose(weights, chosen / chosen.sum(-1, keepdim=True) * 1.5, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.full((37,), 1.5))


def test_route_on_a_hash_layer_takes_tid2eid(backend, gen):
    logits = torch.randn(9, 48, generator=gen)
    tid2eid = torch.randint(0, 48, (500, 6), generator=gen)
    input_ids = torch.randint(0, 500, (9,), generator=gen)
    ids, weights = dispatch.route(logits, None, 6, 2.5, tid2eid, input_ids)
    assert torch.equal(ids.long(), tid2eid[input_ids])
    chosen = torch.sqrt(F.softplus(logits)).gather(1, ids.long())
    assert torch.allclose(weights, chosen / chosen.sum(-1, keepdim=True) * 2.5, atol=1e-5)


def test_route_rejects_mixed_modes(gen):
    from banyan.kernels.triton.router import route

    with pytest.raises(ValueError, match="either a bias"):
        route(torch.randn(2, 8), torch.zeros(8), 2, 1.0, torch.zeros(4, 2, dtype=torch.long), torch.zeros(2))


@pytest.mark.parametrize("fmt", ["dense", "fp4"])
def test_fused_moe_takes_what_expert_parallelism_sends(backend, gen, fmt):
    """An EP rank runs its experts on received rows with one expert each and weight 1, and may
    receive none at all."""
    w1, w3, w2 = _experts(gen, fmt, I, D), _experts(gen, fmt, I, D), _experts(gen, fmt, D, I)
    for rows in (0, 5):
        x = torch.randn(rows, D, generator=gen).to(torch.bfloat16)
        ids = torch.randint(0, E, (rows, 1), generator=gen)
        ones = torch.ones(rows, 1)
        out = dispatch.fused_moe(x, ids, ones, w1, w3, w2, LIMIT)
        assert out.shape == (rows, D) and out.dtype == torch.bfloat16
        expected = _oracle(x, ids, ones, w1, w3, w2)
        scale = expected.abs().max().item() if rows else 1.0
        assert torch.allclose(out.float(), expected, rtol=2e-2, atol=2e-2 * scale)
