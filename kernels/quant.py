"""Exact (de)quantisation of DeepSeek-V4 checkpoint formats.

* FP8 e4m3 weights with one E8M0 (power-of-two) scale per 128x128 block.
* FP4 e2m1 routed experts, two values per byte (low nibble = even column), with one
  E8M0 scale per 1x32 block.

`QuantizedWeight` carries one weight in any of these forms (or dense); its `tiles`
dequantise a bounded number of rows at a time, so nothing ever holds a full dequantised
copy. The `quantize_*` functions make such tensors from float weights (for tests and tiny
checkpoints); every value they produce dequantises exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

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


def _fp8_scale_shape(n: int, k: int) -> tuple[int, int]:
    return -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)


def _fp8_rows(weight: torch.Tensor, scale: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` of an FP8 weight in fp32; `start` need not be block-aligned."""
    offset = start % FP8_BLOCK
    s = e8m0_to_float(scale[start // FP8_BLOCK:(stop - 1) // FP8_BLOCK + 1])
    # s: [blocks, ceil(K/128)] -> [stop - start, K]
    s = _expand_blocks(s, offset + stop - start, weight.shape[1], FP8_BLOCK, FP8_BLOCK)[offset:]
    return weight[start:stop].float() * s


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`[N, K]` e4m3 with `[ceil(N/128), ceil(K/128)]` scales -> fp32."""
    n, k = weight.shape
    expected = _fp8_scale_shape(n, k)
    if tuple(scale.shape) != expected:
        raise ValueError(f"FP8 scale has shape {tuple(scale.shape)}, expected {expected} for weight {(n, k)}")
    return _fp8_rows(weight, scale, 0, n)


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


FORMATS = ("dense", "fp8", "fp4")
TILE_ROWS = 128  # rows dequantised at a time: the scratch is at most TILE_ROWS x K


@dataclass(frozen=True)
class QuantizedWeight:
    """One weight `[..., N, K]` as the checkpoint stores it.

    * `dense`: `data` is the float tensor (any shape); no scale.
    * `fp8`: `data` e4m3 `[..., N, K]`, `scale` `[..., ceil(N/128), ceil(K/128)]` (E8M0 or float).
    * `fp4`: `data` packed e2m1 `[..., N, K/2]` (int8 or uint8, low nibble = even column),
      `scale` `[..., N, K/32]`.

    Leading dimensions (stacked experts) are indexed with `weight[e]`.
    """

    data: torch.Tensor
    scale: torch.Tensor | None = None
    fmt: str = "dense"

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"weight format must be one of {FORMATS}, got {self.fmt!r}")
        if self.fmt == "dense":
            if self.scale is not None:
                raise ValueError("a dense weight takes no scale")
            return
        if self.scale is None:
            raise ValueError(f"an {self.fmt} weight needs a scale")
        if self.data.dim() < 2:
            raise ValueError(f"an {self.fmt} weight needs at least 2 dims, got shape {tuple(self.data.shape)}")
        if self.fmt == "fp8" and self.data.dtype != torch.float8_e4m3fn:
            raise ValueError(f"fp8 weight data must be float8_e4m3fn, got {self.data.dtype}")
        if self.fmt == "fp4" and self.data.dtype not in (torch.int8, torch.uint8):
            raise ValueError(f"fp4 weight data must be packed int8/uint8, got {self.data.dtype}")
        *lead, n, k = self.shape
        if self.fmt == "fp8":
            expected = (*lead, *_fp8_scale_shape(n, k))
        else:
            if k % FP4_BLOCK:
                raise ValueError(f"fp4 weight input dim {k} is not a multiple of {FP4_BLOCK}")
            expected = (*lead, n, k // FP4_BLOCK)
        if tuple(self.scale.shape) != expected:
            raise ValueError(f"{self.fmt} scale has shape {tuple(self.scale.shape)}, expected {expected} "
                             f"for weight {self.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical (dequantised) shape."""
        shape = tuple(self.data.shape)
        return (*shape[:-1], 2 * shape[-1]) if self.fmt == "fp4" else shape

    @property
    def nbytes(self) -> int:
        scale = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.data.numel() * self.data.element_size() + scale

    def __getitem__(self, index: int) -> "QuantizedWeight":
        """One matrix of a stacked weight."""
        return QuantizedWeight(self.data[index], None if self.scale is None else self.scale[index], self.fmt)

    def select_rows(self, start: int, stop: int) -> "QuantizedWeight":
        """Rows `start:stop` (along N) in the stored format; FP8 needs block-aligned bounds."""
        n = self.shape[-2]
        if self.fmt == "fp8" and (start % FP8_BLOCK or (stop % FP8_BLOCK and stop != n)):
            raise ValueError(f"fp8 rows {start}:{stop} are not aligned to the {FP8_BLOCK}-row scale blocks")
        data = self.data[..., start:stop, :]
        if self.fmt == "dense":
            return QuantizedWeight(data)
        scale = (self.scale[..., start // FP8_BLOCK:-(-stop // FP8_BLOCK), :] if self.fmt == "fp8"
                 else self.scale[..., start:stop, :])
        return QuantizedWeight(data, scale, self.fmt)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows `start:stop` of a 2-D weight: fp32 for quantised formats, the data itself if dense."""
        if self.fmt == "dense":
            return self.data[start:stop]
        if self.fmt == "fp8":
            return _fp8_rows(self.data, self.scale, start, stop)
        return dequantize_fp4(self.data[start:stop], self.scale[start:stop])

    def tiles(self, dtype: torch.dtype, start: int = 0, stop: int | None = None,
              ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """`(a, b, rows a:b in dtype)` covering rows `start:stop` of a 2-D weight, TILE_ROWS at a time."""
        stop = self.shape[-2] if stop is None else stop
        for a in range(start, stop, TILE_ROWS):
            b = min(a + TILE_ROWS, stop)
            yield a, b, self.rows(a, b).to(dtype)

    def dequantize(self) -> torch.Tensor:
        """The whole weight in fp32 (a full copy: for tests and small tensors)."""
        if self.data.dim() > 2:
            return torch.stack([self[i].dequantize() for i in range(self.data.shape[0])])
        return self.rows(0, self.shape[0]).float()


def dequantize_into(out: torch.Tensor, weight: QuantizedWeight) -> None:
    """`out.copy_(weight.dequantize())` through bounded scratch: TILE_ROWS rows at a time."""
    if tuple(out.shape) != weight.shape:
        raise ValueError(f"weight has shape {weight.shape}, expected {tuple(out.shape)}")
    if out.dim() > 2:
        for i in range(out.shape[0]):
            dequantize_into(out[i], weight[i])
        return
    for a, b, tile in weight.tiles(out.dtype):
        out[a:b].copy_(tile)
