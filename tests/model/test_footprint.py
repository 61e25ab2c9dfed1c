"""Weight and KV footprint: hand-computed tiny figures, real allocations, the published V4 sizes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from banyan.model.config import ModelConfig
from banyan.model.footprint import GIB, footprint, kv_bytes, weight_bytes
from banyan.model.loader import load_model


def _state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.fixture(scope="module")
def tiny_weights():
    return weight_bytes(ModelConfig.preset("tiny"), mtp=True)  # the tiny checkpoints carry an MTP layer


def test_tiny_checkpoint_bytes_are_the_official_files_tensors(tiny_weights, tiny_official):
    with safe_open(tiny_official / "model.safetensors", framework="pt") as f:
        on_disk = sum(t.numel() * t.element_size() for t in (f.get_tensor(k) for k in f.keys()))
    assert tiny_weights["checkpoint"]["total"] == on_disk
    # routed experts, by hand: (6 layers + the MTP layer) x 8 experts x (w1, w2, w3) x
    # (64x64 FP4 nibbles + one E8M0 per 32)
    assert tiny_weights["checkpoint"]["routed_experts"] == 7 * 8 * 3 * (64 * 64 // 2 + 64 * 64 // 32)
    assert tiny_weights["dequant_fp32"]["routed_experts"] == 7 * 8 * 3 * 64 * 64 * 4
    assert tiny_weights["dequant_bf16"]["routed_experts"] == 7 * 8 * 3 * 64 * 64 * 2


def test_resident_bytes_are_what_loading_allocates(tiny_weights, tiny_official, tiny_model):
    assert tiny_weights["dequant_fp32"]["total"] == _state_bytes(tiny_model)
    native = load_model(tiny_official, dtype=torch.bfloat16, progress=False, weight_format="native")
    assert tiny_weights["native_bf16"]["total"] == _state_bytes(native)
    dense = load_model(tiny_official, dtype=torch.bfloat16, progress=False)
    assert tiny_weights["dequant_bf16"]["total"] == _state_bytes(dense)


def test_tiny_kv_bytes_per_token_by_hand():
    kv = kv_bytes(ModelConfig.preset("tiny"), torch.bfloat16)
    # per 128-token page: 2 CSA layers (ratio 4) with 32 entries x 128 (bf16) + 32 indexer keys x 64 (bf16);
    # 2 HCA layers with 1 entry x 128. The SWA page: one 128-wide vector per token and layer, plus
    # the CSA layers' fp32 overlap snapshots of 4 tokens x (kv, score) x (128 + 64)
    csa = 32 * 128 * 2 + 32 * 64 * 2
    hca = 1 * 128 * 2
    snapshots = 2 * 4 * 2 * (128 + 64) * 4
    assert kv["page_size"] == 128
    assert kv["compressed_per_token"] == (2 * csa + 2 * hca) / 128
    assert kv["swa_per_token"] == (6 * 128 * 128 * 2 + snapshots) / 128
    assert kv_bytes(ModelConfig.preset("tiny"), torch.float32)["swa_per_token"] == (6 * 128 * 128 * 4 + snapshots) / 128


def test_flash_bf16_compressed_pool_meets_the_target():
    """Issue 12: at most 6,880 B per cached token with bf16 KV (entries only; snapshots live with SWA)."""
    assert kv_bytes(ModelConfig.preset("flash"), torch.bfloat16)["compressed_per_token"] <= 6880


@pytest.mark.parametrize("preset,checkpoint_gib,bf16_gib", [("flash", 145, 530), ("pro", 792, 2930)])
def test_full_models_match_the_published_sizes(preset, checkpoint_gib, bf16_gib):
    """gpu-plan.md §2.3: Flash 145 GiB native / 530 GiB bf16; Pro 792 GiB / 2930 GiB."""
    report = footprint(ModelConfig.preset(preset))
    weights = report["weights"]
    assert weights["checkpoint"]["total"] / GIB == pytest.approx(checkpoint_gib, rel=3e-3)
    assert weights["dequant_bf16"]["total"] / GIB == pytest.approx(bf16_gib, rel=3e-3)
    assert weights["dequant_fp32"]["total"] == pytest.approx(2 * weights["dequant_bf16"]["total"], rel=1e-3)
    assert weights["native_bf16"]["total"] == pytest.approx(weights["checkpoint"]["total"], rel=1e-3)
    assert report["expert_format"] == "fp4" and report["params"] > 284e9
