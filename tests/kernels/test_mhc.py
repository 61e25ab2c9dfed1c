import pytest
import torch

from banyan.kernels import native
from banyan.kernels.mhc import TOKENS_LAST_MIN, hc_post, hc_pre, sinkhorn


def test_sinkhorn_comb_is_doubly_stochastic_and_mixing_is_exact():
    gen = torch.Generator().manual_seed(0)
    t, n, d = 6, 4, 32
    x = torch.randn(t, n, d, generator=gen)
    fn = torch.randn((2 + n) * n, n * d, generator=gen) * 0.02
    base = torch.randn((2 + n) * n, generator=gen) * 0.5
    scale = torch.tensor([1.0, 0.5, 2.0])
    collapsed, post, comb = hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20)
    assert torch.allclose(comb.sum(-1), torch.ones(t, n), atol=1e-3)
    assert torch.allclose(comb.sum(-2), torch.ones(t, n), atol=1e-4)
    assert ((post > 0) & (post < 2)).all()
    out = torch.randn(t, d, generator=gen)
    y = hc_post(out, x, post, comb)
    k = 2
    expected = post[:, k, None] * out + sum(comb[:, j, k, None] * x[:, j] for j in range(n))
    assert torch.allclose(y[:, k], expected, atol=1e-5)
    assert collapsed.shape == (t, d)


def spec_hc_pre(x, fn, scale, base, norm_eps, eps, iters):
    """docs/dsv4-spec.md §5.2, written out op by op."""
    n = x.shape[1]
    xf = x.flatten(1).float()
    m = (xf @ fn.T) * torch.rsqrt(xf.square().mean(-1, keepdim=True) + norm_eps)
    pre = torch.sigmoid(m[:, :n] * scale[0] + base[:n]) + eps
    post = 2 * torch.sigmoid(m[:, n:2 * n] * scale[1] + base[n:2 * n])
    c = (m[:, 2 * n:] * scale[2] + base[2 * n:]).view(-1, n, n).softmax(-1) + eps
    c = c / (c.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(-1, keepdim=True) + eps)
        c = c / (c.sum(-2, keepdim=True) + eps)
    return (pre.unsqueeze(-1) * x.float()).sum(1).to(x.dtype), post, c


@pytest.mark.parametrize("native_mix", [True, False], ids=["native", "torch"])
def test_hc_pre_equals_the_spec_formula_to_fp32_rounding(monkeypatch, native_mix):
    if not native_mix:
        monkeypatch.setattr(native, "hc_pre", lambda *a: None)
    elif native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(1)
    n, d = 4, 48
    fn = torch.randn((2 + n) * n, n * d, generator=gen) * 0.05
    base = torch.randn((2 + n) * n, generator=gen)
    scale = torch.tensor([1.0, 0.5, 3.0])  # a sharp comb: Sinkhorn has work to do
    for t, dtype in ((1, torch.float32), (7, torch.float32), (native.HC_PRE_MAX_TOKENS, torch.float32),
                     (native.HC_PRE_MAX_TOKENS + 1, torch.float32), (5, torch.bfloat16)):
        x = torch.randn(t, n, d, generator=gen).to(dtype)
        ours, spec = hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20), spec_hc_pre(x, fn, scale, base, 1e-6, 1e-6, 20)
        for a, b in zip(ours, spec):
            tol = 1e-5 if a.dtype == torch.float32 else 1e-2
            assert torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)


def test_sinkhorn_layouts_agree_to_the_bit(monkeypatch):
    """From TOKENS_LAST_MIN tokens Sinkhorn runs on a tokens-last copy; it must give exactly what
    the small-batch form gives the same matrices a few at a time (chunk-size invariance). The
    torch loops are what runs on GPUs and where the native CPU helper is not built."""
    monkeypatch.setattr(native, "sinkhorn_", lambda *a: False)
    gen = torch.Generator().manual_seed(2)
    t = 3 * TOKENS_LAST_MIN + 5
    comb = torch.softmax(torch.randn(t, 4, 4, generator=gen) * 3, dim=-1) + 1e-6  # sharp rows
    whole = sinkhorn(comb.clone(), 1e-6, 20)
    pieces = torch.cat([sinkhorn(part.clone(), 1e-6, 20) for part in comb.split(TOKENS_LAST_MIN - 1)])
    assert torch.equal(whole, pieces)
