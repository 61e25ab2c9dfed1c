"""Backend selection by device and BANYAN_KERNELS."""

from __future__ import annotations

import sys

import pytest
import torch

from banyan.kernels import dispatch


def test_auto_picks_torch_on_cpu_and_overrides_apply_per_op(monkeypatch):
    monkeypatch.delenv("BANYAN_KERNELS", raising=False)
    assert set(dispatch.selected("cpu").values()) == {"torch"}
    monkeypatch.setenv("BANYAN_KERNELS", "auto, moe=triton ,sampling=triton")
    chosen = dispatch.selected("cpu")
    assert chosen["moe"] == chosen["sampling"] == "triton" and chosen["gemm"] == "torch"
    monkeypatch.setenv("BANYAN_KERNELS", "triton,attention=torch")
    assert dispatch.backend("attention", "cpu") == "torch" and dispatch.backend("mhc", "cpu") == "triton"


@pytest.mark.parametrize("spec, message", [("cuda", "unknown backend 'cuda'"), ("auto,moes=torch", "unknown op 'moes'"),
                                           ("auto,moe=flashinfer", "unknown backend 'flashinfer'")])
def test_bad_settings_name_the_problem(monkeypatch, spec, message):
    monkeypatch.setenv("BANYAN_KERNELS", spec)
    with pytest.raises(ValueError, match=message):
        dispatch.backend("moe", "cpu")


def test_a_registered_backend_serves_its_op(monkeypatch):
    fake = type(sys)("banyan_fake_sampler")
    fake.sample = lambda logits, temperature, seeds, steps: torch.full((logits.shape[0],), 42)
    monkeypatch.setitem(sys.modules, "banyan_fake_sampler", fake)
    monkeypatch.setitem(dispatch._MODULES, "sampling", dict(dispatch._MODULES["sampling"]))
    dispatch.register("sampling", "fake", "banyan_fake_sampler")
    monkeypatch.setenv("BANYAN_KERNELS", "auto,sampling=fake")
    tokens = dispatch.sample(torch.zeros(3, 5), torch.ones(3), torch.zeros(3, dtype=torch.long),
                             torch.zeros(3, dtype=torch.long))
    assert tokens.tolist() == [42, 42, 42]
    with pytest.raises(ValueError, match="has no implementation of 'moe'"):
        monkeypatch.setenv("BANYAN_KERNELS", "fake")
        dispatch.backend("moe", "cpu")
    with pytest.raises(ValueError, match="unknown kernel op"):
        dispatch.register("matmul", "fake", "banyan_fake_sampler")


def test_importing_the_dispatch_decorates_no_kernel():
    import subprocess

    code = ("import sys; import banyan.kernels.dispatch as d; "
            "print(any(m.startswith('banyan.kernels.triton.') and not m.startswith('banyan.kernels.triton.ref') "
            "for m in sys.modules), 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
