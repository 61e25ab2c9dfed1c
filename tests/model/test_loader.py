"""Weight loading: exact dequantisation of the official format, both layouts, shards, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from banyan.model.generate import SimpleSession
from banyan.model.loader import CheckpointError, load_model
from banyan.tests.conftest import random_prompt

# The spec's formulas (docs/dsv4-spec.md §4.2-4.3), written out independently of the loader.
SPEC_FP4 = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=torch.float32)


def spec_e8m0(s: torch.Tensor) -> torch.Tensor:
    b = s.view(torch.uint8).int()
    return torch.ldexp(torch.ones_like(b, dtype=torch.float32), b - 127)


def spec_fp8(w8: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, k = w8.shape
    s_full = spec_e8m0(s).repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return w8.float() * s_full


def spec_fp4(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, k = q.shape[0], q.shape[1] * 2
    u = q.view(torch.uint8)
    lo, hi = (u & 0xF).long(), (u >> 4).long()
    w = torch.stack([SPEC_FP4[lo], SPEC_FP4[hi]], -1).reshape(n, k)
    return w * spec_e8m0(s).repeat_interleave(32, dim=1)


def read_all(path) -> dict[str, torch.Tensor]:
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_official_checkpoint_really_is_quantised(tiny_official):
    raw = read_all(tiny_official)
    assert raw["layers.0.attn.wq_a.weight"].dtype == torch.float8_e4m3fn
    assert raw["layers.0.attn.wq_a.scale"].dtype == torch.float8_e8m0fnu
    assert raw["layers.0.ffn.experts.0.w1.weight"].dtype == torch.int8
    assert raw["layers.0.ffn.experts.0.w1.scale"].shape[1] * 32 == raw["layers.0.ffn.experts.0.w1.weight"].shape[1] * 2
    assert raw["layers.0.ffn.gate.tid2eid"].dtype == torch.int64
    assert raw["layers.3.ffn.gate.bias"].dtype == torch.float32
    assert raw["embed.weight"].dtype == torch.bfloat16
    cfg = json.loads((tiny_official / "config.json").read_text())
    assert cfg["expert_dtype"] == "fp4" and cfg["quantization_config"]["scale_fmt"] == "ue8m0"


def test_official_weights_dequantise_exactly(tiny_official, tiny_model):
    raw = read_all(tiny_official)
    params = dict(tiny_model.named_parameters())
    checked = 0
    for name, w in raw.items():
        if name.endswith(".scale"):
            continue
        scale = raw.get(name[: -len(".weight")] + ".scale")
        if scale is None:
            continue
        expected = spec_fp4(w, scale) if w.dtype == torch.int8 else spec_fp8(w, scale)
        if ".ffn.experts." in name:
            layer, _, _, expert, which, _ = name.split(".")[1:]
            got = params[f"layers.{layer}.ffn.experts.{which}"][int(expert)]
        else:
            got = params[name]
        assert torch.equal(got, expected), name
        checked += 1
    assert checked > 50
    # the E8M0 decode agrees with torch's own float8_e8m0fnu conversion
    s = raw["layers.0.attn.wq_b.scale"]
    assert torch.equal(spec_e8m0(s), s.float())


def test_layouts_load_to_identical_models(tiny_model, tiny_transformers):
    other = load_model(tiny_transformers, progress=False)
    a, b = tiny_model.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_official_layout_logits_match_oracle(tiny_model, oracle_logits):
    """The oracle runs on the dequantised (transformers-layout) weights."""
    ids = random_prompt(300, seed=21)
    logits = SimpleSession(tiny_model, max_tokens=300, max_requests=1).prefill(0, ids, all_logits=True)
    assert (logits - oracle_logits(ids)).abs().max() <= 1e-4


def test_sharded_checkpoint_with_scales_in_other_shards(tiny_official, tiny_model, tmp_path):
    raw = read_all(tiny_official)
    names = sorted(raw)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, part in shards.items():
        save_file({k: raw[k].contiguous() for k in part}, str(tmp_path / fname))
        weight_map.update({k: fname for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(tiny_official / "config.json", tmp_path / "config.json")
    loaded = load_model(tmp_path, progress=False)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny_model.state_dict().items())


def _rewrite(src, dst, edit) -> None:
    raw = read_all(src)
    edit(raw)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in raw.items()}, str(dst / "model.safetensors"))
    shutil.copy(src / "config.json", dst / "config.json")


def test_missing_tensor_is_named(tiny_official, tmp_path):
    _rewrite(tiny_official, tmp_path, lambda raw: raw.pop("layers.2.attn.indexer.weights_proj.weight"))
    with pytest.raises(CheckpointError, match=r"layers\.2\.attn\.indexer\.weights_proj\.weight"):
        load_model(tmp_path, progress=False)


def test_missing_expert_is_named(tiny_official, tmp_path):
    def drop(raw):
        raw.pop("layers.4.ffn.experts.5.w2.weight")
        raw.pop("layers.4.ffn.experts.5.w2.scale")
    _rewrite(tiny_official, tmp_path, drop)
    with pytest.raises(CheckpointError, match=r"layers\.4\.ffn\.experts\.w2 \(experts \[5\]\)"):
        load_model(tmp_path, progress=False)


def test_unexpected_tensor_is_named_but_mtp_is_ignored(tiny_official, tmp_path):
    def add(raw):
        raw["mtp.0.e_proj.weight"] = torch.zeros(4, 4)
        raw["mtp.0.emb.tok_emb.weight"] = torch.zeros(4, 4)
    _rewrite(tiny_official, tmp_path / "mtp", add)
    load_model(tmp_path / "mtp", progress=False)
    _rewrite(tiny_official, tmp_path / "bad", lambda raw: raw.__setitem__("layers.0.attn.bogus.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'layers\.0\.attn\.bogus\.weight'"):
        load_model(tmp_path / "bad", progress=False)


def test_misshaped_tensor_is_named(tiny_official, tmp_path):
    _rewrite(tiny_official, tmp_path, lambda raw: raw.__setitem__("norm.weight", torch.ones(7, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=r"tensor 'norm\.weight' has shape \(7,\), expected \(64,\)"):
        load_model(tmp_path, progress=False)


def test_bf16_target_dtype(tiny_official):
    model = load_model(tiny_official, dtype=torch.bfloat16, progress=False)
    assert model.layers[0].attn.wq_a.weight.dtype == torch.bfloat16
    assert model.layers[0].attn.attn_sink.dtype == torch.float32  # kept in fp32 like the checkpoint
    assert model.layers[0].ffn.gate.tid2eid.dtype == torch.int64


def test_missing_checkpoint_files_are_reported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v4"}))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        load_model(tmp_path, progress=False)
