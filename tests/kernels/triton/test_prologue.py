"""The q/kv prologue and the compressor's window close against the norm/RoPE/pool/QDQ chain."""

from __future__ import annotations

import pytest
import torch

from banyan.kernels import dispatch
from banyan.kernels.compress import softmax_pool
from banyan.kernels.norm import rms_norm
from banyan.kernels.rope import apply_rope_, rope_inv_freq, rope_table
from banyan.kernels.kv_formats import FP8KVCache, fp8_qdq

SENTINEL = 7.0  # pool rows the padding must leave alone


def _table(positions: list[int], rope_dim: int = 64) -> torch.Tensor:
    return rope_table(torch.tensor(positions), rope_inv_freq(rope_dim, 160000.0, 16.0))


def _official_row(x: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """bf16 RoPE dims, QDQ'd no-RoPE dims (what an FP8 cache or a qdq float pool holds)."""
    nope = x.shape[-1] - rope_dim
    return torch.cat([fp8_qdq(x[:, :nope].to(torch.bfloat16)), x[:, nope:].to(torch.bfloat16).float()], 1)


@pytest.mark.parametrize("weighted", [False, True])
def test_norm_rope_of_q_heads(backend, gen, weighted):
    x = torch.randn(3, 6, 512, generator=gen).to(torch.bfloat16)
    weight = torch.rand(512, generator=gen) + 0.5 if weighted else None
    table = _table([3, 70, 9000])
    expected = apply_rope_(rms_norm(x, weight, 1e-6), table)
    out = dispatch.norm_rope(x, weight, 1e-6, table)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_kv_insert_into_a_float_pool_skips_padding(backend, gen):
    kv = torch.randn(3, 128, generator=gen)
    weight = torch.rand(128, generator=gen) + 0.5
    table = _table([5, 6, 7], 32)
    pool = torch.full((8, 128), SENTINEL)
    dispatch.kv_insert(kv, weight, 1e-6, table, pool, torch.tensor([5, -1, 2]))
    expected = apply_rope_(rms_norm(kv, weight, 1e-6), table)
    assert torch.allclose(pool[[5, 2]], expected[[0, 2]], atol=1e-6)
    untouched = torch.ones(8, dtype=torch.bool)
    untouched[[5, 2]] = False
    assert (pool[untouched] == SENTINEL).all()


def test_kv_insert_with_the_official_qdq(backend, gen):
    kv = torch.randn(4, 512, generator=gen).to(torch.bfloat16)
    weight = torch.rand(512, generator=gen) + 0.5
    table = _table([0, 127, 128, 5000])
    slots = torch.tensor([15, 16, -1, 33])  # rows on both sides of a page boundary; one padded token
    rows = apply_rope_(rms_norm(kv, weight, 1e-6), table)
    expected = _official_row(rows.float(), 64)
    pool = torch.full((40, 512), SENTINEL, dtype=torch.bfloat16)
    dispatch.kv_insert(kv, weight, 1e-6, table, pool, slots, qdq=True)
    assert torch.equal(pool[[15, 16, 33]].float(), expected[[0, 1, 3]])
    cache = FP8KVCache.empty(40, page_rows=16)
    dispatch.kv_insert(kv, weight, 1e-6, table, cache, slots)
    assert torch.equal(cache.read(torch.tensor([15, 16, 33])), expected[[0, 1, 3]])
    reference = FP8KVCache.empty(40, page_rows=16)
    reference.write(slots, rows)
    assert torch.equal(cache.data, reference.data)  # byte for byte, padding rows and scale pads included


def _window(gen: torch.Generator, entries: int, slots: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.randn(entries, slots, 2, d, generator=gen)  # strided views, as the model gathers them
    kv, score = rows[:, :, 0], rows[:, :, 1] * 2
    score[0, : slots // 2] = float("-inf")  # CSA's first window: the overlap half is empty
    score[1, 3, :10] = float("-inf")
    return kv, score


@pytest.mark.parametrize("slots", [8, 40])  # CSA (overlapping halves) and a long HCA-like window
def test_compress_close(backend, gen, slots):
    kv, score = _window(gen, 3, slots, 128)
    weight = torch.rand(128, generator=gen) + 0.5
    table = _table([0, 4, 8], 32)
    pool = torch.full((6, 128), SENTINEL)
    dispatch.compress_close(kv, score, weight, 1e-6, table, pool, torch.tensor([4, -1, 0]))
    expected = apply_rope_(rms_norm(softmax_pool(kv, score), weight, 1e-6), table)
    assert torch.allclose(pool[[4, 0]], expected[[0, 2]], atol=1e-5)
    assert (pool[[1, 2, 3, 5]] == SENTINEL).all()


def test_compress_close_into_an_fp8_pool(backend, gen):
    kv, score = _window(gen, 2, 8, 512)
    weight = torch.rand(512, generator=gen) + 0.5
    table = _table([128, 256])
    slots = torch.tensor([3, 1])
    cache = FP8KVCache.empty(4, page_rows=1)  # HCA: one entry per page
    dispatch.compress_close(kv, score, weight, 1e-6, table, cache, slots)
    entries = apply_rope_(rms_norm(softmax_pool(kv, score), weight, 1e-6), table)
    reference = FP8KVCache.empty(4, page_rows=1)
    reference.write(slots, entries)
    assert torch.equal(cache.data, reference.data)
    assert torch.equal(cache.read(slots), _official_row(entries, 64))


def test_qdq_needs_whole_64_blocks(gen):
    from banyan.kernels.triton.prologue import kv_insert

    with pytest.raises(ValueError, match="blocks of 64"):
        kv_insert(torch.randn(1, 128), torch.ones(128), 1e-6, _table([0], 32), torch.zeros(2, 128),
                  torch.tensor([0]), qdq=True)
