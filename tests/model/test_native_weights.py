"""The model running on weights kept in their stored format (`weight_format="native"`)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from banyan.model.generate import SimpleSession, greedy_generate
from banyan.model.linear import Linear
from banyan.model.loader import load_model
from banyan.tests.conftest import random_prompt


@pytest.fixture(scope="module")
def native_model(tiny_official):
    return load_model(tiny_official, progress=False, weight_format="native")


def _logits(model, ids: list[int], chunk: int) -> torch.Tensor:
    return SimpleSession(model, max_tokens=len(ids)).prefill(0, ids, chunk_size=chunk, all_logits=True)


def test_every_quantised_projection_runs_in_its_stored_format(native_model):
    quant = {name: m.quant for name, m in native_model.named_modules() if isinstance(m, Linear) and m.quant}
    layer0 = {name.removeprefix("layers.0.") for name in quant if name.startswith("layers.0.")}
    assert {"attn.wq_a", "attn.wq_b", "attn.wkv", "attn.wo_a", "attn.wo_b", "ffn.shared_experts.w1",
            "ffn.experts.w1", "ffn.experts.w2", "ffn.experts.w3"} <= layer0
    assert any(name.endswith("indexer.wq_b") for name in quant)
    assert quant["layers.0.ffn.experts.w1"] == "fp4" and quant["layers.0.attn.wo_a"] == "fp8"


@pytest.mark.parametrize("chunk", [7, 64])  # decode-like small chunks (dense MoE) and a prefill chunk
def test_native_forward_matches_the_dequantised_model(native_model, tiny_model, chunk):
    ids = random_prompt(64, seed=chunk)
    native, dense = _logits(native_model, ids, chunk), _logits(tiny_model, ids, chunk)
    assert native.shape == dense.shape == (64, tiny_model.cfg.vocab_size)
    torch.testing.assert_close(native, dense, rtol=0, atol=1e-5)


def test_native_greedy_tokens_equal_the_dequantised_ones(native_model, tiny_model):
    prompt = random_prompt(24, seed=3)
    assert greedy_generate(native_model, prompt, 24) == greedy_generate(tiny_model, prompt, 24)


def test_native_bf16_resident_bytes_are_the_checkpoint_bytes(tiny_official):
    model = load_model(tiny_official, dtype=torch.bfloat16, progress=False, weight_format="native")
    resident = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with safe_open(tiny_official / "model.safetensors", framework="pt") as f:
        stored = sum(t.numel() * t.element_size() for t in map(f.get_tensor, f.keys()))
    assert abs(resident - stored) <= 0.05 * stored, (resident, stored)
