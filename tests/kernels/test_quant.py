import torch

from banyan.kernels.quant import dequantize_fp4, dequantize_fp8, e8m0_to_float, quantize_fp4, quantize_fp8


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
