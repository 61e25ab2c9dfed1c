"""Torch definitions of the KV-cache and activation formats (what the pools store, what the
kernels read and write).

* Official activation quantisation (`act_quant_1x128`): 1x128 blocks along K, power-of-two
  scales `2**ceil(log2(max(amax, 1e-4) / 448))`, e4m3 values.
* The FP8 KV row in FlashMLA's MODEL1 layout (vLLM `fp8_ds_mla`, SGLang's V4 pool), 584 B
  for V4's 512-dim rows: 448 e4m3 no-RoPE dims | 64 bf16 RoPE dims | 7 E8M0 scales (one per
  64 dims) | 1 pad. A page holds `page_rows` rows as `[rows x 576 B data][rows x 8 B
  scales]`, padded to a multiple of 576 B; row `r` lives in page `r // page_rows`.
  The no-RoPE dims go through the official QDQ (`fp8_qdq`), so what the cache stores is
  exactly what V4's QAT saw.
* FP8 indexer keys: per block of `block_rows` entries, `[rows x d e4m3][rows x fp32
  scale]`, one power-of-two scale per entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0
ACT_BLOCK = 128
KV_QUANT_BLOCK = 64


def pow2_scale(amax: torch.Tensor) -> torch.Tensor:
    """The official power-of-two scale for e4m3: `2**ceil(log2(max(amax, 1e-4) / 448))`.

    Exact, from the fp32 ratio's exponent and mantissa (as the Triton kernels compute it):
    a float `log2` rounds `2**k * (1 + 2**-23)` to `k` and would pick a scale half as large."""
    mantissa, exponent = torch.frexp(amax.float().clamp(min=1e-4) / FP8_MAX)  # ratio = mantissa * 2**exponent
    return torch.ldexp(torch.ones_like(mantissa), exponent - (mantissa == 0.5).to(exponent.dtype))


def _blockwise(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values `[..., K]` and scales `[..., ceil(K/block)]` of `x [..., K]` in blocks of `block`
    along K; a K tail is its own block (zero padding changes no block's amax)."""
    k = x.shape[-1]
    pad = -k % block
    x = x.float() if not pad else torch.nn.functional.pad(x.float(), (0, pad))
    blocks = x.unflatten(-1, (-1, block))  # [..., ceil(K/block), block]
    scale = pow2_scale(blocks.abs().amax(dim=-1))
    q = (blocks / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.flatten(-2)[..., :k], scale


def act_quant_1x128(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x [M, K]` -> (e4m3 `[M, K]`, fp32 scales `[M, ceil(K/128)]`); a K tail is its own block."""
    return _blockwise(x, ACT_BLOCK)


def fp8_qdq(x: torch.Tensor, block: int = KV_QUANT_BLOCK) -> torch.Tensor:
    """Quantise-dequantise `x [..., K]` through e4m3 in blocks of `block` (fp32 out)."""
    q, scale = _blockwise(x, block)
    return q.float() * scale.repeat_interleave(block, dim=-1)[..., :x.shape[-1]]


def kv_row_qdq(rows: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """What an `FP8KVCache` row holds, as fp32 `[N, dim]`: the no-RoPE dims bf16-rounded then
    through `fp8_qdq`, the RoPE dims bf16-rounded (V4's official QAT rounding of window and
    compressed KV)."""
    nope = rows.shape[-1] - rope_dim
    rows = rows.to(torch.bfloat16)
    return torch.cat([fp8_qdq(rows[..., :nope]), rows[..., nope:].float()], dim=-1)


def index_key_qdq(keys: torch.Tensor) -> torch.Tensor:
    """What an `FP8IndexerKeys` row holds, as fp32: e4m3 with one power-of-two scale per key."""
    return fp8_qdq(keys, keys.shape[-1])


@dataclass(frozen=True)
class KVRowFormat:
    """Byte layout of one FP8 KV row: `nope` e4m3 dims, then `rope` bf16 dims, then scales."""

    dim: int = 512
    rope_dim: int = 64

    def __post_init__(self) -> None:
        if self.rope_dim % 2 or not 0 < self.rope_dim < self.dim:
            raise ValueError(f"FP8 KV rows need an even rope_dim below dim; got dim={self.dim}, "
                             f"rope_dim={self.rope_dim}")

    @property
    def nope(self) -> int:
        return self.dim - self.rope_dim

    @property
    def scale_blocks(self) -> int:  # 7 for V4; a tail shorter than 64 (small test models) is a block
        return -(-self.nope // KV_QUANT_BLOCK)

    @property
    def data_bytes(self) -> int:  # 576 for V4
        return self.nope + 2 * self.rope_dim

    @property
    def scale_bytes(self) -> int:  # 8 for V4: 7 scales and a pad byte
        return self.scale_blocks + 1

    def page_bytes(self, page_rows: int) -> int:
        raw = page_rows * (self.data_bytes + self.scale_bytes)
        return -(-raw // self.data_bytes) * self.data_bytes


@dataclass(frozen=True)
class FP8KVCache:
    """A paged pool of FP8 KV rows; `data` is uint8 `[pages, fmt.page_bytes(page_rows)]`."""

    data: torch.Tensor
    page_rows: int
    fmt: KVRowFormat = KVRowFormat()

    @classmethod
    def empty(cls, rows: int, page_rows: int, fmt: KVRowFormat = KVRowFormat(),
              device: torch.device | str = "cpu") -> "FP8KVCache":
        pages = -(-rows // page_rows)
        return cls(torch.zeros(pages, fmt.page_bytes(page_rows), dtype=torch.uint8, device=device), page_rows, fmt)

    @property
    def num_rows(self) -> int:
        return self.data.shape[0] * self.page_rows

    def _offsets(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Byte offsets of each row's data and scales in `data.flatten()`."""
        page, slot = rows // self.page_rows, rows % self.page_rows
        base = page * self.data.shape[1]
        fmt = self.fmt
        return base + slot * fmt.data_bytes, base + self.page_rows * fmt.data_bytes + slot * fmt.scale_bytes

    def write(self, rows: torch.Tensor, kv: torch.Tensor) -> None:
        """Store `kv [N, dim]` at global rows `rows [N]` (rows < 0 are skipped), after the QDQ."""
        keep = rows >= 0
        rows, kv = rows[keep].long(), kv[keep]
        fmt = self.fmt
        q, scale = _blockwise(kv[:, :fmt.nope].to(torch.bfloat16), KV_QUANT_BLOCK)  # scale: [N, nope/64]
        rope = kv[:, fmt.nope:].to(torch.bfloat16).contiguous().view(torch.uint8)  # [N, 2 * rope_dim]
        exponent = torch.log2(scale).round().to(torch.int32) + 127
        scale_bytes = torch.cat([exponent.to(torch.uint8), exponent.new_zeros(len(rows), 1).to(torch.uint8)], 1)
        data_at, scale_at = self._offsets(rows)
        flat = self.data.view(-1)
        flat[data_at[:, None] + torch.arange(fmt.data_bytes, device=flat.device)] = torch.cat(
            [q.view(torch.uint8), rope], 1)
        flat[scale_at[:, None] + torch.arange(fmt.scale_bytes, device=flat.device)] = scale_bytes

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """Dequantised rows `[N, dim]` fp32 at global rows `rows [N]` (all valid)."""
        fmt = self.fmt
        data_at, scale_at = self._offsets(rows.long())
        flat = self.data.view(-1)
        data = flat[data_at[:, None] + torch.arange(fmt.data_bytes, device=flat.device)]
        exps = flat[scale_at[:, None] + torch.arange(fmt.scale_blocks, device=flat.device)]
        scale = torch.exp2(exps.float() - 127).repeat_interleave(KV_QUANT_BLOCK, dim=1)[:, :fmt.nope]
        nope = data[:, :fmt.nope].view(torch.float8_e4m3fn).float() * scale
        rope = data[:, fmt.nope:].contiguous().view(torch.bfloat16).float()
        return torch.cat([nope, rope], 1)


@dataclass(frozen=True)
class FP8IndexerKeys:
    """A paged pool of FP8 indexer keys; `data` is uint8 `[blocks, block_rows * (dim + 4)]`."""

    data: torch.Tensor
    block_rows: int
    dim: int = 128

    @classmethod
    def empty(cls, rows: int, block_rows: int, dim: int = 128, device: torch.device | str = "cpu") -> "FP8IndexerKeys":
        blocks = -(-rows // block_rows)
        return cls(torch.zeros(blocks, block_rows * (dim + 4), dtype=torch.uint8, device=device), block_rows, dim)

    def _offsets(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block, slot = rows // self.block_rows, rows % self.block_rows
        base = block * self.data.shape[1]
        return base + slot * self.dim, base + self.block_rows * self.dim + slot * 4

    def write(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """Store `keys [N, dim]` at global rows (rows < 0 skipped): e4m3 with one pow2 fp32 scale per row."""
        keep = rows >= 0
        rows, keys = rows[keep].long(), keys[keep]
        q, scale = _blockwise(keys, self.dim)  # scale: [N, 1]
        data_at, scale_at = self._offsets(rows)
        flat = self.data.view(-1)
        flat[data_at[:, None] + torch.arange(self.dim, device=flat.device)] = q.view(torch.uint8)
        flat[scale_at[:, None] + torch.arange(4, device=flat.device)] = scale.contiguous().view(torch.uint8)

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """Dequantised keys `[N, dim]` fp32 at global rows `rows [N]` (all valid)."""
        data_at, scale_at = self._offsets(rows.long())
        flat = self.data.view(-1)
        q = flat[data_at[:, None] + torch.arange(self.dim, device=flat.device)].view(torch.float8_e4m3fn).float()
        scale = flat[scale_at[:, None] + torch.arange(4, device=flat.device)].contiguous().view(torch.float32)
        return q * scale


KVPool = torch.Tensor | FP8KVCache  # a float row pool [R, dim] or an FP8 paged one
IndexerKeys = torch.Tensor | FP8IndexerKeys  # float keys [S, d] or FP8 ones
Pool = KVPool | FP8IndexerKeys


def write_rows(pool: Pool, rows: torch.Tensor, values: torch.Tensor) -> None:
    """`pool[rows] = values` for rows >= 0; an FP8 pool applies its QDQ."""
    if isinstance(pool, (FP8KVCache, FP8IndexerKeys)):
        pool.write(rows, values)
        return
    keep = rows >= 0
    pool.index_copy_(0, rows[keep], values[keep].to(pool.dtype))


def read_rows(pool: Pool, rows: torch.Tensor) -> torch.Tensor:
    """fp32 rows `[..., dim]` at `rows [...]` (all valid)."""
    if isinstance(pool, FP8KVCache):
        return pool.read(rows.flatten()).view(*rows.shape, pool.fmt.dim)
    if isinstance(pool, FP8IndexerKeys):
        return pool.read(rows.flatten()).view(*rows.shape, pool.dim)
    return pool[rows.long()].float()


def row_bytes(pool: Pool) -> float:
    """Allocated bytes per row of a pool (an FP8 page's padding shared out over its rows)."""
    if isinstance(pool, FP8KVCache):
        return pool.data.shape[1] / pool.page_rows
    if isinstance(pool, FP8IndexerKeys):
        return pool.data.shape[1] / pool.block_rows
    return pool.shape[1] * pool.element_size()


def pool_nbytes(pool: Pool) -> int:
    """Bytes a pool allocates."""
    t = pool if isinstance(pool, torch.Tensor) else pool.data
    return t.numel() * t.element_size()
