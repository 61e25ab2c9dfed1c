"""Fused mHC against the fp32 references of `kernels.mhc`."""

from __future__ import annotations

import pytest
import torch

from banyan.kernels import dispatch, mhc


def _inputs(gen: torch.Generator, t: int, d: int, rows: int):
    n = 4
    x = torch.randn(t, n, d, generator=gen)
    fn = torch.randn(rows, n * d, generator=gen) * 0.02
    base = torch.randn(rows, generator=gen) * 0.5
    return x, fn, base


@pytest.mark.parametrize("d", [96, 200])  # 200: the collapse's last block is a tail
def test_hc_pre(backend, gen, d):
    x, fn, base = _inputs(gen, 5, d, 24)
    scale = torch.tensor([1.0, 0.5, 2.0])
    got = dispatch.hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20)
    expected = mhc.hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got[2].sum(-2), torch.ones(5, 4), atol=1e-4)  # Sinkhorn: doubly stochastic


def test_hc_pre_split_along_k_and_in_bf16(gen):
    from banyan.kernels.triton.mhc import hc_pre

    x, fn, base = _inputs(gen, 17, 128, 24)  # 17 tokens: two token blocks, one of them a tail
    scale = torch.tensor([0.7, 1.3, 0.9])
    expected = mhc.hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20)
    for a, b in zip(hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20, splits=3), expected):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    xb = x.to(torch.bfloat16)
    collapsed, post, comb = hc_pre(xb, fn, scale, base, 1e-6, 1e-6, 20)
    ref = mhc.hc_pre(xb, fn, scale, base, 1e-6, 1e-6, 20)
    assert collapsed.dtype == torch.bfloat16 and torch.allclose(collapsed.float(), ref[0].float(), atol=2e-2)
    assert torch.allclose(comb, ref[2], atol=1e-5)


def test_hc_post_and_hc_head(backend, gen):
    x, fn, base = _inputs(gen, 6, 200, 4)
    _, post, comb = mhc.hc_pre(x, *_inputs(gen, 6, 200, 24)[1:2], torch.ones(3), torch.zeros(24), 1e-6, 1e-6, 20)
    out = torch.randn(6, 200, generator=gen)
    assert torch.allclose(dispatch.hc_post(out, x, post, comb), mhc.hc_post(out, x, post, comb), atol=1e-5)
    scale = torch.tensor([0.8])
    assert torch.allclose(dispatch.hc_head(x, fn, scale, base, 1e-6, 1e-6), mhc.hc_head(x, fn, scale, base, 1e-6, 1e-6),
                          atol=1e-5)
