"""Triton kernel tests run on CPU under Triton's interpreter. It must be on before any
`@triton.jit` runs: the kernel modules are imported lazily (by `kernels.dispatch` or inside
the tests), after this conftest has set the variable."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

BACKENDS = ("torch", "triton")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Run a dispatch-level test once per backend."""
    monkeypatch.setenv("BANYAN_KERNELS", request.param)
    return request.param


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
