"""The native CPU helpers: bit-equal to the torch loops they replace, and optional."""

import pytest
import torch

from banyan.kernels import mhc, native
from banyan.kernels.mhc import TOKENS_LAST_MIN


@pytest.fixture
def native_off(monkeypatch):
    """Run with the native helpers disabled (the torch loops), restoring the cached library after."""
    monkeypatch.setenv(native.ENV, "0")
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def _combs(t: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(t, n, n, generator=gen) * 3, dim=-1) + 1e-6  # sharp rows


def _torch_sinkhorn(comb: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The torch loops' small-batch form (sums in order), a few tokens at a time. (Its tokens-last
    form equals it for n <= 4, V4's hc_mult; torch's outer-dim sums of more terms regroup them.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "sinkhorn_", lambda *a: False)
        return torch.cat([mhc.sinkhorn(part.clone(), 1e-6, iters) for part in comb.split(TOKENS_LAST_MIN - 1)])


@pytest.mark.parametrize("t", [1, 3, 8, 9, TOKENS_LAST_MIN, 2 * TOKENS_LAST_MIN + 5])
@pytest.mark.parametrize("n", [2, 4, 5])
def test_native_sinkhorn_equals_the_torch_loops_to_the_bit(t, n):
    if native.library() is None:
        pytest.skip("no C compiler here")
    comb = _combs(t, n, seed=t * 10 + n)
    got = comb.clone()
    assert native.sinkhorn_(got, 1e-6, 20)
    assert torch.equal(got, _torch_sinkhorn(comb))
    assert torch.equal(mhc.sinkhorn(comb.clone(), 1e-6, 20), got)  # what the model calls takes this path


def test_native_sinkhorn_declines_what_it_does_not_take():
    comb = _combs(4, 4, seed=0)
    for case in (comb.double(), comb.transpose(1, 2), _combs(2, native.MAX_N + 1, seed=1), comb[0]):
        before = case.clone()
        assert not native.sinkhorn_(case, 1e-6, 20)
        assert torch.equal(case, before)


def test_disabled_or_unbuildable_falls_back_to_torch(native_off, monkeypatch, tmp_path):
    assert native.library() is None  # BANYAN_NATIVE=0
    comb = _combs(5, 4, seed=3)
    assert torch.equal(mhc.sinkhorn(comb.clone(), 1e-6, 20).contiguous(), _torch_sinkhorn(comb))

    monkeypatch.setenv(native.ENV, "1")
    monkeypatch.setenv("BANYAN_HOME", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    assert native.library() is None
    assert not any(tmp_path.rglob("*.so"))
