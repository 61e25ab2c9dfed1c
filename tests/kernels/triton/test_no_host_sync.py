"""The Triton ops launch without reading a device value on the host (what CUDA-graph capture and
overlap scheduling need): on CPU, every `.item()`, `.tolist()` and tensor truth test raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from banyan.kernels.indexer import QueryGroup
from banyan.kernels.quant import QuantizedWeight, quantize_fp8
from banyan.kernels.rope import rope_inv_freq, rope_table
from banyan.kernels.sparse_attention import KVIndex
from banyan.kernels.kv_formats import FP8KVCache


def _host_read(*args, **kwargs):
    raise AssertionError("a device value was read on the host")


@contextmanager
def no_host_reads() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__bool__"):
            patch.setattr(torch.Tensor, name, _host_read)
        yield


def test_every_triton_op_runs_without_host_reads(gen):
    from banyan.kernels.triton import compressor, gemm_fp8, indexer, mhc, moe, prologue, router, sampling, sparse_attn

    e, d, i = 4, 64, 32
    experts = [QuantizedWeight(torch.randn(e, n, k, generator=gen).to(torch.bfloat16))
               for n, k in ((i, d), (i, d), (d, i))]
    x, logits = torch.randn(3, d, generator=gen).to(torch.bfloat16), torch.randn(3, e, generator=gen)
    w8, s8 = quantize_fp8(torch.randn(64, 256, generator=gen))
    kv = torch.randn(10, 64, generator=gen)
    index = KVIndex(torch.randint(-1, 10, (3, 8), generator=gen), torch.tensor([8, 3, 0]))
    visible = torch.tensor([[5], [10], [0]])
    group = QueryGroup(torch.arange(3)[:, None], torch.randint(0, 10, (3, 10), generator=gen), visible, visible.numpy())
    table = rope_table(torch.arange(3), rope_inv_freq(64, 10000.0))
    streams = torch.randn(3, 4, 64, generator=gen)
    fn, base = torch.randn(24, 256, generator=gen) * 0.02, torch.zeros(24)
    pool = FP8KVCache.empty(8, page_rows=4)
    slots = torch.tensor([1, -1, 6])
    rows = torch.randn(3, 8, 512, generator=gen)

    with no_host_reads():
        ids, weights = router.route(logits, torch.zeros(e), 2, 1.5)
        moe.fused_moe(x, ids, weights, *experts, 10.0)
        gemm_fp8.fp8_gemm(torch.randn(2, 256), w8, s8, split_k=2)
        sparse_attn.sparse_attention(torch.randn(3, 2, 64), kv, index, torch.zeros(2), 0.1, kv, index, splits=2)
        indexer.indexer_topk(torch.randn(3, 4, 64), torch.randn(3, 4), kv, [group], 4)
        _, post, comb = mhc.hc_pre(streams, fn, torch.ones(3), base, 1e-6, 1e-6, 20, splits=2)
        mhc.hc_post(torch.randn(3, 64), streams, post, comb)
        prologue.norm_rope(torch.randn(3, 2, 512), None, 1e-6, table)
        prologue.kv_insert(torch.randn(3, 512), torch.ones(512), 1e-6, table, pool, slots)
        compressor.compress_close(rows, rows, torch.ones(512), 1e-6, table, pool, slots)
        sampling.sample(logits, torch.ones(3), torch.zeros(3, dtype=torch.long), torch.arange(3))
    assert pool.data.count_nonzero() > 0  # the guarded run did write


def test_the_guard_catches_a_host_read():
    with no_host_reads(), pytest.raises(AssertionError, match="host"):
        torch.ones(2).sum().item()
