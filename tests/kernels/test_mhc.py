import torch

from banyan.kernels.mhc import hc_post, hc_pre


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
