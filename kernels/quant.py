"""Exact (de)quantisation of DeepSeek-V4 checkpoint formats.

* FP8 e4m3 weights with one E8M0 (power-of-two) scale per 128x128 block.
* FP4 e2m1 routed experts, two values per byte (low nibble = even column), with one
  E8M0 scale per 1x32 block.

The `quantize_*` functions make such tensors from float weights (for tests and tiny
checkpoints); every value they produce dequantises exactly.
"""

import torch

FP8_BLOCK = 128
FP4_BLOCK = 32
FP8_MAX = 448.0
FP4_MAX = 6.0
FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                           -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32)


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """Decode E8M0 bytes (`2**(b - 127)`; 255 is NaN). Float scales pass through."""
    if scale.dtype == torch.float8_e8m0fnu or scale.dtype == torch.uint8:
        bits = scale.view(torch.uint8).to(torch.int32)
        out = torch.ldexp(torch.ones_like(bits, dtype=torch.float32), bits - 127)
        return out.masked_fill(bits == 255, float("nan"))
    return scale.float()


def float_to_e8m0(scale: torch.Tensor) -> torch.Tensor:
    """Encode positive power-of-two floats as E8M0 bytes."""
    exponent = torch.log2(scale.float()).round().to(torch.int32) + 127
    return exponent.clamp(0, 254).to(torch.uint8).view(torch.float8_e8m0fnu)


def _expand_blocks(scale: torch.Tensor, rows: int, cols: int, block_rows: int, block_cols: int) -> torch.Tensor:
    return scale.repeat_interleave(block_rows, 0)[:rows].repeat_interleave(block_cols, 1)[:, :cols]


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`[N, K]` e4m3 with `[ceil(N/128), ceil(K/128)]` scales -> fp32."""
    n, k = weight.shape
    expected = (-(-n // FP8_BLOCK), -(-k // FP8_BLOCK))
    if tuple(scale.shape) != expected:
        raise ValueError(f"FP8 scale has shape {tuple(scale.shape)}, expected {expected} for weight {(n, k)}")
    return weight.float() * _expand_blocks(e8m0_to_float(scale), n, k, FP8_BLOCK, FP8_BLOCK)


def dequantize_fp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`[N, K/2]` packed e2m1 (int8) with `[N, K/32]` scales -> fp32 `[N, K]`."""
    n, half_k = packed.shape
    k = half_k * 2
    if tuple(scale.shape) != (n, k // FP4_BLOCK):
        raise ValueError(f"FP4 scale has shape {tuple(scale.shape)}, expected {(n, k // FP4_BLOCK)}")
    nibbles = packed.view(torch.uint8)
    lo, hi = (nibbles & 0xF).long(), (nibbles >> 4).long()
    values = FP4_VALUES.to(packed.device)
    w = torch.stack([values[lo], values[hi]], dim=-1).reshape(n, k)
    return w * e8m0_to_float(scale).repeat_interleave(FP4_BLOCK, dim=1)


def _pow2_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(amax.clamp(min=1e-30) / qmax)))


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `[N, K]` -> (e4m3 weight, E8M0 block scales)."""
    n, k = weight.shape
    rows, cols = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
    padded = weight.new_zeros(rows * FP8_BLOCK, cols * FP8_BLOCK)
    padded[:n, :k] = weight.float()
    blocks = padded.view(rows, FP8_BLOCK, cols, FP8_BLOCK)
    scale = _pow2_scale(blocks.abs().amax(dim=(1, 3)), FP8_MAX)
    q = (weight.float() / _expand_blocks(scale, n, k, FP8_BLOCK, FP8_BLOCK)).clamp(-FP8_MAX, FP8_MAX)
    return q.to(torch.float8_e4m3fn), float_to_e8m0(scale)


def quantize_fp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `[N, K]` -> (packed int8 `[N, K/2]`, E8M0 scales `[N, K/32]`), round to nearest."""
    n, k = weight.shape
    if k % FP4_BLOCK:
        raise ValueError(f"FP4 needs the input dim to be a multiple of {FP4_BLOCK}, got {k}")
    blocks = weight.float().view(n, k // FP4_BLOCK, FP4_BLOCK)
    scale = _pow2_scale(blocks.abs().amax(dim=-1), FP4_MAX)
    scaled = (blocks / scale.unsqueeze(-1)).reshape(n, k)
    codes = (scaled.unsqueeze(-1) - FP4_VALUES.to(weight.device)).abs().argmin(dim=-1).to(torch.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed.view(torch.int8), float_to_e8m0(scale)
