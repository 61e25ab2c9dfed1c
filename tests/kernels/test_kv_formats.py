"""The cache and activation formats the kernels share, against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from banyan.kernels.kv_formats import (FP8IndexerKeys, FP8KVCache, KVRowFormat, act_quant_1x128, fp8_qdq,
                                      kv_row_qdq, pow2_scale)


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


# ---- the official definition, written out independently of torch's casts --------------------

def _e4m3_values() -> np.ndarray:
    """The 127 non-negative finite e4m3fn values by code (sign 0): exponent bias 7, 3 mantissa
    bits, subnormals at exponent 0, code 0x7f is NaN."""
    codes = np.arange(127)
    e, m = codes >> 3, codes & 7
    return np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7))


def _e4m3_codes(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even e4m3 codes of float64 `x` (|x| <= 448)."""
    values = _e4m3_values()
    a = np.abs(x)
    hi = np.clip(np.searchsorted(values, a), 1, 126)
    lo = hi - 1
    d_lo, d_hi = a - values[lo], values[hi] - a
    code = np.where((d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0)), hi, lo)
    code = np.where(a >= values[126], 126, code)
    return (code | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)  # a negative rounding to 0 is -0


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 by round-to-nearest-even on the bits (finite inputs)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def _official_block(x: np.ndarray) -> tuple[np.ndarray, int]:
    """One block: (e4m3 codes, scale exponent k) with s = 2**k = 2**ceil(log2(max(amax, 1e-4) / 448)),
    the ratio computed in fp32 and its ceil(log2) taken exactly."""
    ratio = np.float32(max(np.float32(np.abs(x).max()), np.float32(1e-4))) / np.float32(448)
    mantissa, exponent = math.frexp(float(ratio))
    k = exponent - 1 if mantissa == 0.5 else exponent
    return _e4m3_codes(np.clip(x.astype(np.float64) / 2.0 ** k, -448, 448)), k


def _edge_rows() -> np.ndarray:
    """Rows of 448 no-RoPE values: random magnitudes, zeros, tiny, huge, negative, ties and the
    block maxima just above a power of two times 448."""
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(448) * 10.0 ** rng.uniform(-6, 6, 448) for _ in range(6)]
    rows.append(np.zeros(448))
    rows.append(np.full(448, 1e-30) * rng.choice([-1, 1], 448))  # amax below the 1e-4 clamp
    rows.append(np.concatenate([np.full(64, 3e38), -np.full(64, 1e37), np.full(320, 1e-7)]))
    edge = 448 * 2.0 ** np.arange(-20, 20, 40 / 7).round() * (1 + 2.0 ** -7)  # bf16 just above 448 * 2^k
    rows.append(np.concatenate([np.concatenate([[e], rng.uniform(-e, e, 63)]) for e in edge]))
    ties = (np.arange(448) % 16 + 16.5) / 16 * 2.0 ** (np.arange(448) // 64 - 3)  # halfway between e4m3 values
    rows.append(np.where(np.arange(448) % 2, -ties, ties))
    return _bf16(np.stack(rows).astype(np.float32))


def test_fp8_rows_are_the_official_definition_bit_for_bit():
    """Codes, E8M0 scale bytes and dequantised bit patterns of `FP8KVCache` and `fp8_qdq` equal
    the definition, evaluated independently (exact ceil(log2), a hand-rounded e4m3)."""
    nope = _edge_rows()  # [R, 448], bf16 values
    n = nope.shape[0]
    rope = _bf16(np.random.default_rng(1).standard_normal((n, 64)).astype(np.float32))
    codes, exps = [], []
    for row in nope:
        blocks = [_official_block(row[b:b + 64]) for b in range(0, 448, 64)]
        codes.append(np.concatenate([c for c, _ in blocks]))
        exps.append([k for _, k in blocks])
    codes, exps = np.stack(codes), np.array(exps)
    values = np.where(codes & 0x80, -1.0, 1.0) * _e4m3_values()[np.where(codes & 0x7F == 0x7F, 0, codes & 0x7F)]
    expected = (values * 2.0 ** np.repeat(exps, 64, axis=1)).astype(np.float32)

    cache = FP8KVCache.empty(rows=n, page_rows=n)
    kv = torch.from_numpy(np.concatenate([nope, rope], 1))
    cache.write(torch.arange(n), kv)
    page = cache.data[0].numpy()
    data = page[:n * 576].reshape(n, 576)
    scales = page[n * 576:n * 584].reshape(n, 8)
    assert np.array_equal(data[:, :448], codes)
    assert np.array_equal(scales[:, :7].astype(np.int64) - 127, exps) and not scales[:, 7].any()
    assert np.array_equal(data[:, 448:].view(np.uint16), rope.view(np.uint32) >> 16)
    back = cache.read(torch.arange(n)).numpy()
    assert np.array_equal(back[:, :448].view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(fp8_qdq(kv[:, :448]).numpy().view(np.uint32), expected.view(np.uint32))


def test_ragged_last_block_is_its_own_block(gen):
    """The tiny model's rows (96 no-RoPE dims): blocks of 64 and 32, each with its own scale."""
    fmt = KVRowFormat(dim=128, rope_dim=32)
    assert (fmt.scale_blocks, fmt.scale_bytes, fmt.data_bytes) == (2, 3, 160)
    cache = FP8KVCache.empty(rows=8, page_rows=4, fmt=fmt)
    kv = torch.randn(3, 128, generator=gen) * torch.tensor([1.0, 1e-3, 50.0])[:, None]
    cache.write(torch.tensor([1, 4, 7]), kv)
    nope = kv[:, :96].to(torch.bfloat16)
    expected = torch.cat([_official_qdq(nope[:, :64], 64), _official_qdq(nope[:, 64:], 32)], 1)
    assert torch.equal(cache.read(torch.tensor([1, 4, 7]))[:, :96], expected)
    assert torch.equal(kv_row_qdq(kv, 32)[:, :96], expected)


def _just_above(k: int) -> np.float32:
    """The smallest fp32 amax whose fp32 ratio amax / 448 lies above 2**k (a float log2 rounds it to k)."""
    a = np.float32(448 * 2.0 ** k)
    while np.float32(a) / np.float32(448) <= np.float32(2.0 ** k):
        a = np.nextafter(a, np.float32(np.inf))
    return a


def test_fp8_indexer_keys_are_the_official_definition_bit_for_bit():
    """fp32 keys, one scale per key: includes maxima a float log2 would put at half the scale."""
    rng = np.random.default_rng(2)
    keys = [rng.standard_normal(128) * 10.0 ** rng.uniform(-5, 5) for _ in range(4)]
    keys += [np.zeros(128), np.full(128, -1e-30)]
    for k in (-12, 0, 7):
        top = _just_above(k)
        keys.append(np.concatenate([[top], rng.uniform(-float(top), float(top), 127)]))
    keys = np.stack(keys).astype(np.float32)
    blocks = [_official_block(row) for row in keys]
    codes = np.stack([c for c, _ in blocks])
    scales = np.array([2.0 ** k for _, k in blocks], dtype=np.float32)
    pool = FP8IndexerKeys.empty(rows=len(keys), block_rows=len(keys), dim=128)
    pool.write(torch.arange(len(keys)), torch.from_numpy(keys))
    data = pool.data[0].numpy()
    assert np.array_equal(data[:len(keys) * 128].reshape(-1, 128), codes)
    assert np.array_equal(data[len(keys) * 128:].view(np.float32), scales)
