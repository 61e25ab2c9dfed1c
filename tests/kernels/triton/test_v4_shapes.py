"""Larger, V4-like shapes under the interpreter (slow: run with -m slow)."""

from __future__ import annotations

import pytest
import torch

from banyan.kernels import mhc
from banyan.kernels.quant import QuantizedWeight, quantize_fp8

pytestmark = pytest.mark.slow


def test_wq_a_decode_gemm(gen):
    from banyan.kernels.triton.gemm_fp8 import fp8_gemm

    w, s = quantize_fp8(torch.randn(1024, 4096, generator=gen))
    x = torch.randn(64, 4096, generator=gen).to(torch.bfloat16)
    out = fp8_gemm(x, w, s, split_k=4)
    expected = x.float() @ QuantizedWeight(w, s, "fp8").dequantize().T
    assert ((out.float() - expected).abs().max() / expected.abs().max()) < 1e-2


def test_hc_pre_at_hidden_4096(gen):
    from banyan.kernels.triton.mhc import hc_pre

    x = torch.randn(16, 4, 4096, generator=gen).to(torch.bfloat16)
    fn = torch.randn(24, 4 * 4096, generator=gen) * 0.01
    scale, base = torch.tensor([1.0, 0.5, 2.0]), torch.randn(24, generator=gen) * 0.5
    got = hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20, splits=4)
    expected = mhc.hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20)
    assert torch.allclose(got[0].float(), expected[0].float(), atol=3e-2)
    assert torch.allclose(got[1], expected[1], atol=1e-5) and torch.allclose(got[2], expected[2], atol=1e-5)


def test_fp4_moe_64_tokens_top6_of_32_experts(gen):
    from banyan.kernels.triton.moe import fused_moe
    from banyan.kernels.triton.ref.moe import fused_moe as reference

    e, d, i, k, t = 32, 512, 256, 6, 64

    def experts(n: int, kk: int) -> QuantizedWeight:
        packed = torch.randint(0, 256, (e, n, kk // 2), generator=gen, dtype=torch.uint8).view(torch.int8)
        scale = torch.randint(120, 124, (e, n, kk // 32), generator=gen, dtype=torch.uint8)
        return QuantizedWeight(packed, scale.view(torch.float8_e8m0fnu), "fp4")

    w1, w3, w2 = experts(i, d), experts(i, d), experts(d, i)
    x = (torch.randn(t, d, generator=gen) * 0.3).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)]).to(torch.int32)
    weights = torch.rand(t, k, generator=gen)
    out, expected = fused_moe(x, ids, weights, w1, w3, w2, 10.0), reference(x.float(), ids, weights, w1, w3, w2, 10.0)
    assert ((out.float() - expected).abs().max() / expected.abs().max()) < 2e-2
