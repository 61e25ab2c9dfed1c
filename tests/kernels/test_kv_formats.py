"""The cache and activation formats the kernels share, against their definitions."""

from __future__ import annotations

import pytest
import torch

from banyan.kernels.kv_formats import (FP8IndexerKeys, FP8KVCache, KVRowFormat, act_quant_1x128, fp8_qdq,
                                      pow2_scale)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _official_qdq(x: torch.Tensor, block: int) -> torch.Tensor:
    """The definition, one block at a time: s = 2^ceil(log2(max(amax, 1e-4) / 448)), e4m3(x / s) * s."""
    out = torch.empty_like(x, dtype=torch.float32)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], block):
            v = x[r, b:b + block].float()
            s = 2.0 ** torch.ceil(torch.log2(torch.clamp(v.abs().max(), min=1e-4) / 448))
            out[r, b:b + block] = (v / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s
    return out


def test_model1_row_is_584_bytes_and_pages_pad_to_576():
    fmt = KVRowFormat()
    assert (fmt.nope, fmt.data_bytes, fmt.scale_bytes) == (448, 576, 8)
    assert fmt.data_bytes + fmt.scale_bytes == 584
    assert fmt.page_bytes(128) == 128 * 584 + (-128 * 584 % 576) and fmt.page_bytes(128) % 576 == 0
    assert fmt.page_bytes(1) == 1152  # an HCA page of one entry
    with pytest.raises(ValueError, match="even rope_dim"):
        KVRowFormat(dim=128, rope_dim=31)


def test_fp8_kv_rows_round_trip_through_the_official_qdq(gen):
    cache = FP8KVCache.empty(rows=40, page_rows=16)
    kv = torch.randn(6, 512, generator=gen) * torch.tensor([0.01, 1, 30, 300, 1e-3, 5])[:, None]
    rows = torch.tensor([0, 15, 16, -1, 39, 31])  # both sides of page boundaries; -1 is not written
    cache.write(rows, kv)
    keep = rows >= 0
    back = cache.read(rows[keep])
    expected_nope = _official_qdq(kv[keep, :448].to(torch.bfloat16), 64)
    assert torch.equal(back[:, :448], expected_nope)
    assert torch.equal(back[:, 448:], kv[keep, 448:].to(torch.bfloat16).float())  # RoPE dims stay bf16
    assert torch.equal(fp8_qdq(kv[keep, :448].to(torch.bfloat16)), expected_nope)


def test_fp8_kv_layout_puts_data_then_scales_in_each_page(gen):
    cache = FP8KVCache.empty(rows=32, page_rows=16)
    kv = torch.randn(1, 512, generator=gen)
    cache.write(torch.tensor([17]), kv)  # page 1, slot 1
    page = cache.data[1]
    data, scales = page[576:2 * 576], page[16 * 576 + 8:16 * 576 + 16]
    rope = data[448:].view(torch.bfloat16).float()
    assert torch.equal(rope, kv[0, 448:].to(torch.bfloat16).float())
    s = pow2_scale(kv[0, :448].to(torch.bfloat16).float().view(7, 64).abs().amax(-1))
    assert torch.equal(scales[:7].int() - 127, torch.log2(s).int()) and scales[7] == 0
    assert cache.data[0].count_nonzero() == 0 and page[:576].count_nonzero() == 0


def test_fp8_indexer_keys_round_trip_with_a_pow2_scale_per_row(gen):
    keys = FP8IndexerKeys.empty(rows=20, block_rows=8, dim=128)
    k = torch.randn(3, 128, generator=gen) * torch.tensor([1e-2, 1.0, 100.0])[:, None]
    keys.write(torch.tensor([7, 8, 19]), k)
    assert torch.equal(keys.read(torch.tensor([7, 8, 19])), _official_qdq(k, 128))


def test_act_quant_1x128_handles_a_k_tail(gen):
    x = torch.randn(3, 300, generator=gen)
    q, s = act_quant_1x128(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 3)
    deq = q.float() * s.repeat_interleave(128, 1)[:, :300]
    padded = torch.nn.functional.pad(x, (0, 84))
    assert torch.equal(deq, _official_qdq(padded, 128)[:, :300])
