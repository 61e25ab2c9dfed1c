"""Block-FP8 GEMM and the grouped `wo_a`, against fp32 dequantised references."""

from __future__ import annotations

import pytest
import torch

from banyan.kernels import dispatch
from banyan.kernels.quant import QuantizedWeight, dequantize_fp8, float_to_e8m0, quantize_fp4, quantize_fp8
from banyan.kernels.kv_formats import act_quant_1x128


def _fp8_weight(gen: torch.Generator, n: int, k: int) -> QuantizedWeight:
    w, s = quantize_fp8(torch.randn(n, k, generator=gen) * torch.linspace(0.01, 2.0, n)[:, None])
    return QuantizedWeight(w, s, "fp8")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("m", [1, 5])
def test_fp8_linear_matches_the_dequantised_weight(backend, gen, m):
    # N and K are not multiples of the 128 blocks: ragged tails in both
    w = _fp8_weight(gen, 200, 300)
    x = torch.randn(m, 300, generator=gen).to(torch.bfloat16)
    expected = x.float() @ w.dequantize().T
    out = dispatch.linear(x, w)
    assert out.dtype == torch.bfloat16 and out.shape == (m, 200)
    assert _rel(out, expected) < 1e-2


def test_split_k_and_fp32_scales_give_the_same_product(gen):
    from banyan.kernels.triton.gemm_fp8 import fp8_gemm

    w = _fp8_weight(gen, 96, 512)
    x = torch.randn(3, 512, generator=gen)
    expected = x @ w.dequantize().T
    outs = [fp8_gemm(x, w.data, w.scale, split_k=s) for s in (1, 3, 4)]
    outs.append(fp8_gemm(x, w.data, w.scale.float(), split_k=2))  # scales given as fp32, not E8M0
    for out in outs:
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_official_activation_quantisation(backend, gen):
    w = _fp8_weight(gen, 64, 256)
    x = torch.randn(4, 256, generator=gen).to(torch.bfloat16)
    q, s = act_quant_1x128(x.float())
    expected = (q.float() * s.repeat_interleave(128, 1)) @ w.dequantize().T
    out = dispatch.linear(x, w, act_fp8=True)
    assert _rel(out, expected) < 1e-2
    assert _rel(out, x.float() @ w.dequantize().T) > 1e-3  # the quantisation is really applied


def test_grouped_wo_a(backend, gen):
    g, r, d = 4, 96, 256  # R = 96: groups straddle the 128-row scale blocks
    w = _fp8_weight(gen, g * r, d)
    x = torch.randn(3, g, d, generator=gen).to(torch.bfloat16)
    expected = torch.einsum("tgd,grd->tgr", x.float(), w.dequantize().view(g, r, d))
    out = dispatch.grouped_linear(x, w)
    assert out.shape == (3, g, r) and _rel(out, expected) < 1e-2


def test_dense_and_fp4_weights_fall_through_to_the_library_path(backend, gen):
    dense = QuantizedWeight(torch.randn(48, 64, generator=gen))
    packed, scale = quantize_fp4(torch.randn(48, 64, generator=gen))
    fp4 = QuantizedWeight(packed, scale, "fp4")
    x = torch.randn(2, 64, generator=gen)
    for w in (dense, fp4):
        assert torch.allclose(dispatch.linear(x, w), x @ w.dequantize().T, rtol=1e-5, atol=1e-5)


def test_large_m_goes_through_a_dequantised_library_gemm(gen, monkeypatch):
    from banyan.kernels.triton import gemm_fp8

    w = _fp8_weight(gen, 64, 256)
    x = torch.randn(6, 256, generator=gen)
    triton_path = gemm_fp8.fp8_gemm(x, w.data, w.scale)
    monkeypatch.setattr(gemm_fp8, "LIBRARY_MIN_M", 4)
    library_path = gemm_fp8.fp8_gemm(x, w.data, w.scale)
    assert torch.allclose(library_path, triton_path, rtol=1e-5, atol=1e-4)
    assert torch.allclose(library_path, x @ w.dequantize().T, rtol=1e-5, atol=1e-4)


def test_dequantize_kernel_is_exact(gen):
    from banyan.kernels.triton.gemm_fp8 import dequantize_fp8 as triton_dequantize

    w = _fp8_weight(gen, 130, 200)
    assert torch.equal(triton_dequantize(w.data, w.scale, torch.float32), dequantize_fp8(w.data, w.scale))
    scale = float_to_e8m0(torch.full((2, 2), 2.0 ** -3))
    assert torch.equal(triton_dequantize(w.data, scale, torch.float32), w.data.float() * 2.0 ** -3)


def test_bad_shapes_are_named(gen):
    from banyan.kernels.triton.gemm_fp8 import fp8_gemm

    w = _fp8_weight(gen, 64, 128)
    with pytest.raises(ValueError, match="does not fit"):
        fp8_gemm(torch.randn(2, 100), w.data, w.scale)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_gemm(torch.randn(2, 128), w.data.float(), w.scale)
