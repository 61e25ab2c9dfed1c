"""Shared fixtures: tiny random V4 checkpoints in both layouts and the transformers oracle."""

from __future__ import annotations

import os
from pathlib import Path

# libgomp's default active spin-wait makes small torch ops crawl on a busy 2-core machine
# (token-by-token parity: 153 s vs 13 s); set before torch starts its thread pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# the test models are tiny: one intra-op thread per process is faster (model.threads; oracle parity
# 21 s vs 32 s), and the Engine children the tests start inherit it
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from banyan.model.loader import load_model
from banyan.model.make_tiny import make_tiny

TINY_SEED = 1234
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's shared/ folder (golden fixtures): $BANYAN_SHARED, ./shared or ../shared."""
    candidates = [Path(os.environ["BANYAN_SHARED"])] if "BANYAN_SHARED" in os.environ else []
    candidates += [REPO_ROOT / "shared", REPO_ROOT.parent / "shared"]
    for c in candidates:
        if (c / "fixtures").is_dir():
            return c
    pytest.skip(f"no shared/ folder with fixtures beside {REPO_ROOT}")


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny-official"), layout="official", seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_transformers(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny-transformers"), layout="transformers", seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_model(tiny_official):
    return load_model(tiny_official, dtype=torch.float32, progress=False)


@pytest.fixture(scope="session")
def oracle(tiny_transformers):
    """transformers' DeepseekV4ForCausalLM on the same weights, fp32, CPU."""
    from transformers import DeepseekV4ForCausalLM

    return DeepseekV4ForCausalLM.from_pretrained(tiny_transformers, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def oracle_logits(oracle):
    """Memoised full-sequence oracle logits `[T, V]` for a token list."""
    memo: dict[tuple[int, ...], torch.Tensor] = {}

    def run(ids: list[int]) -> torch.Tensor:
        key = tuple(ids)
        if key not in memo:
            with torch.no_grad():
                memo[key] = oracle(torch.tensor([ids]), use_cache=False).logits[0].float()
        return memo[key]

    return run


def random_prompt(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128000, (n,), generator=gen).tolist()
