"""Exact (de)quantisation of the checkpoint formats, and the linear ops over stored weights."""

import pytest
import torch
import torch.nn.functional as F

from banyan.kernels import quant
from banyan.kernels.linear import expert_linear, grouped_linear, linear
from banyan.kernels.quant import (TILE_ROWS, QuantizedWeight, dequantize_fp4, dequantize_fp8, dequantize_into,
                                  e8m0_to_float, quantize_fp4, quantize_fp8)


def test_fp4_nibble_order_low_nibble_is_even_column():
    # byte 0x71: low nibble 1 (0.5) -> column 0, high nibble 7 (6.0) -> column 1
    packed = torch.tensor([[0x71 - 256 if 0x71 > 127 else 0x71, 0x9A - 256]], dtype=torch.int8)
    packed = torch.cat([packed, torch.zeros(1, 14, dtype=torch.int8)], dim=1)  # K = 32
    scale = torch.tensor([[128]], dtype=torch.uint8).view(torch.float8_e8m0fnu)  # 2 ** 1
    w = dequantize_fp4(packed, scale)
    assert w[0, :4].tolist() == [1.0, 12.0, -2.0, -1.0]  # 0x9A: low 0xA (-1.0), high 0x9 (-0.5), times 2


def test_e8m0_decoding():
    raw = torch.tensor([127, 0, 130, 254, 255], dtype=torch.uint8)
    out = e8m0_to_float(raw.view(torch.float8_e8m0fnu))
    assert out[:4].tolist() == [1.0, 2.0 ** -127, 8.0, 2.0 ** 127]
    assert torch.isnan(out[4])


def test_quantisers_round_trip_within_format_precision():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(200, 160, generator=gen)
    q, s = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (2, 2)
    back = dequantize_fp8(q, s)
    assert ((back - w).abs() <= w.abs() * 2 ** -3 + 1e-6).all()  # e4m3: 3 mantissa bits
    q4, s4 = quantize_fp4(w)
    assert q4.shape == (200, 80) and s4.shape == (200, 5)
    back4 = dequantize_fp4(q4, s4)
    blocks = w.view(200, 5, 32).abs().amax(-1, keepdim=True).expand(-1, -1, 32).reshape(200, 160)
    assert ((back4 - w).abs() <= blocks / 3 + 1e-6).all()
    assert torch.equal(dequantize_fp4(*quantize_fp4(back4)), back4)  # representable values are fixed points


# ---- QuantizedWeight and the linear ops ----------------------------------------------------


def _weight(fmt: str, *shape: int, seed: int = 0) -> QuantizedWeight:
    """A random weight `[..., N, K]` in `fmt` (stacked when more than 2 dims)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=gen) * shape[-1] ** -0.5
    if fmt == "dense":
        return QuantizedWeight(w)
    make = quantize_fp8 if fmt == "fp8" else quantize_fp4
    mats = [make(m) for m in w.reshape(-1, *shape[-2:])]
    data = torch.stack([d for d, _ in mats]).reshape(*shape[:-2], *mats[0][0].shape)
    scale = torch.stack([s for _, s in mats]).reshape(*shape[:-2], *mats[0][1].shape)
    return QuantizedWeight(data, scale, fmt)


def _x(*shape: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_weight_checks_name_the_problem():
    q, s = quantize_fp8(torch.randn(200, 160))
    with pytest.raises(ValueError, match=r"fp8 scale has shape \(1, 2\), expected \(2, 2\)"):
        QuantizedWeight(q, s[:1], "fp8")
    with pytest.raises(ValueError, match="needs a scale"):
        QuantizedWeight(q, None, "fp8")
    with pytest.raises(ValueError, match="must be float8_e4m3fn"):
        QuantizedWeight(q.float(), s, "fp8")
    with pytest.raises(ValueError, match="weight format must be one of"):
        QuantizedWeight(q, s, "int4")
    q4, s4 = quantize_fp4(torch.randn(8, 64))
    with pytest.raises(ValueError, match=r"fp4 scale has shape \(8, 1\), expected \(8, 2\)"):
        QuantizedWeight(q4, s4[:, :1], "fp4")
    assert QuantizedWeight(q4, s4, "fp4").shape == (8, 64)
    assert QuantizedWeight(q4, s4, "fp4").nbytes == 8 * 32 + 8 * 2


@pytest.mark.parametrize("fmt", ["fp8", "fp4"])
def test_any_row_window_dequantises_to_the_same_values(fmt):
    w = _weight(fmt, 300, 256)
    full = w.dequantize()
    for start, stop in [(0, 300), (32, 64), (100, 260), (255, 257), (299, 300)]:
        assert torch.equal(w.rows(start, stop), full[start:stop]), (start, stop)
    out = torch.empty(300, 256, dtype=torch.bfloat16)
    dequantize_into(out, w)
    assert torch.equal(out, full.to(torch.bfloat16))  # power-of-two scales: the bf16 cast is exact
    assert torch.equal(out.float(), full)
    aligned = w.select_rows(128, 300)
    assert aligned.fmt == fmt and torch.equal(aligned.dequantize(), full[128:])
    if fmt == "fp8":
        with pytest.raises(ValueError, match="not aligned"):
            w.select_rows(64, 128)


# Shapes of the tiny model's linears (K <= 256: the BLAS sums each output in one pass, the
# same for a 128-row tile as for the whole matrix, so tile-by-tile must be bit-exact).
TINY_SHAPES = [(1, 64, 64), (7, 512, 64), (300, 1024, 64), (33, 64, 256), (129, 200, 160)]


@pytest.mark.parametrize("fmt", ["fp8", "fp4", "dense"])
@pytest.mark.parametrize("m,n,k", TINY_SHAPES)
def test_linear_is_bit_exact_against_the_dequantised_weight(fmt, m, n, k):
    w, x = _weight(fmt, n, k), _x(m, k)
    assert torch.equal(linear(x, w), F.linear(x, w.dequantize()))
    xb = x.to(torch.bfloat16)
    assert torch.equal(linear(xb, w), F.linear(xb, w.dequantize().to(torch.bfloat16)))


def test_linear_at_flash_width_matches_within_fp32_reassociation():
    # K = 4096: BLAS may block the K sum differently for a 128-row tile than for the whole
    # matrix, so agreement is to fp32 summation-order error, not bits.
    w, x = _weight("fp8", 384, 4096), _x(16, 4096)
    ref = F.linear(x, w.dequantize())
    assert ((linear(x, w) - ref).abs() <= 1e-5 * ref.abs().max()).all()


def test_dequantised_scratch_is_bounded_to_one_tile(monkeypatch):
    seen = []
    rows = QuantizedWeight.rows

    def spy(self, start, stop):
        seen.append(stop - start)
        return rows(self, start, stop)

    monkeypatch.setattr(quant.QuantizedWeight, "rows", spy)
    w, x = _weight("fp4", 1000, 64), _x(3, 64)
    linear(x, w)
    assert sum(seen) == 1000 and max(seen) == TILE_ROWS


@pytest.mark.parametrize("fmt", ["fp8", "fp4", "dense"])
def test_grouped_linear_is_wo_a_einsum(fmt):
    # tiny wo_a: 2 groups of 32 rows (inside one FP8 row block); and 4 groups of 128 rows
    for t, g, r, d in [(5, 2, 32, 256), (40, 4, 128, 64)]:
        w, x = _weight(fmt, g * r, d), _x(t, g, d)
        dense = w.dequantize().view(g, r, d)
        out = grouped_linear(x, w)
        # tile by tile is exactly the per-group matmul of the whole dequantised weight; the batched
        # einsum may sum in another order on some BLAS builds (AMD EPYC: 1 ulp), hence close there
        if fmt != "dense":  # dense runs the einsum itself
            assert torch.equal(out, torch.stack([F.linear(x[:, j], dense[j]) for j in range(g)], dim=1))
        torch.testing.assert_close(out, torch.einsum("ngd,grd->ngr", x, dense), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        grouped_linear(_x(2, 3, 256), _weight(fmt, 64, 256))


@pytest.mark.parametrize("fmt", ["fp8", "fp4", "dense"])
def test_expert_linear_applies_each_expert_to_its_rows(fmt):
    w = _weight(fmt, 4, 96, 64)  # [E, N, K]
    counts = [3, 0, 5, 1]
    x = _x(9, 64)
    out = expert_linear(x, w, torch.tensor(counts))
    dense = w.dequantize()
    offsets = [0, 3, 3, 8, 9]
    for e in range(4):
        a, b = offsets[e], offsets[e + 1]
        assert torch.equal(out[a:b], F.linear(x[a:b], dense[e])), e
    with pytest.raises(ValueError, match="sum to 8 but x has 9 rows"):
        expert_linear(x, w, [3, 0, 4, 1])
    with pytest.raises(ValueError, match="one count per expert"):
        expert_linear(x, w, [9])


def test_linear_rejects_a_wrong_input_width():
    with pytest.raises(ValueError, match="input has 32 features but the weight"):
        linear(_x(2, 32), _weight("fp8", 64, 64))
