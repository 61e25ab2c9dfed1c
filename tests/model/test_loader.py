"""Weight loading: exact dequantisation of the official format, both layouts, shards, errors."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from banyan.model.generate import SimpleSession, greedy_generate
from banyan.model.linear import Linear
from banyan.model.loader import CheckpointError, load_model
from banyan.model.make_tiny import make_tiny
from banyan.tests.conftest import TINY_SEED, random_prompt

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


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


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
            kind, layer, _, _, expert, which, _ = name.split(".")  # layers.{i} or mtp.{i}
            got = params[f"{kind}.{layer}.ffn.experts.{which}"][int(expert)]
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


def test_unexpected_tensor_is_named_but_mtp_copies_of_shared_tensors_are_skipped(tiny_official, tmp_path):
    def add(raw):
        raw["mtp.0.emb.tok_emb.weight"] = torch.zeros(4, 4)  # copies of the shared embedding / head
        raw["mtp.0.head.weight"] = torch.zeros(4, 4)
    _rewrite(tiny_official, tmp_path / "mtp", add)
    assert load_model(tmp_path / "mtp", progress=False).mtp is not None
    _rewrite(tiny_official, tmp_path / "mtp-bad", lambda raw: raw.__setitem__("mtp.0.bogus.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'mtp\.0\.bogus\.weight'"):
        load_model(tmp_path / "mtp-bad", progress=False)
    assert load_model(tmp_path / "mtp-bad", progress=False, mtp="no").mtp is None  # all mtp.* skipped
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


# ---- what transformers >= 5.24 writes ---------------------------------------------------------

def save_with_transformers(oracle, out, built: bool):
    """`save_pretrained` with the installed transformers: of a model it loaded from transformers
    5.23 names, or (`built`) of a model it constructed from the config. (The loaded one comes from
    a checkpoint without `mtp.*` tensors: skipping unexpected tensors on load makes transformers
    save official names instead.)"""
    from transformers import DeepseekV4ForCausalLM

    if built:
        model = DeepseekV4ForCausalLM._from_config(oracle.config, dtype=torch.float32)
        model.load_state_dict(oracle.state_dict())
    else:
        source = make_tiny(out.parent / f"{out.name}-source", layout="transformers", seed=TINY_SEED, mtp=False)
        model = DeepseekV4ForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def saved_by_transformers(oracle, tmp_path_factory):
    return {kind: save_with_transformers(oracle, tmp_path_factory.mktemp(f"saved-{kind}"), kind == "built")
            for kind in ("built", "resaved")}


def test_transformers_save_pretrained_layouts_are_what_we_map(saved_by_transformers):
    built, resaved = (set(read_all(saved_by_transformers[k])) for k in ("built", "resaved"))
    # a model transformers built: official layer names under `model.`, kv_norm as `attn.norm`
    assert {"model.layers.0.attn.norm.weight", "model.layers.0.attn.wq_a.weight", "model.layers.0.attn.attn_sink",
            "model.layers.2.attn.indexer.compressor.norm.weight", "model.layers.0.ffn.experts.7.w3.weight",
            "model.layers.0.hc_attn_fn", "head.weight", "model.embed_tokens.weight", "model.hc_head.hc_fn",
            "model.norm.weight"} <= built
    assert not any(".kv_norm." in n or "self_attn" in n for n in built)
    # re-saving what it loaded from 5.23 names: those names, with `.kv_norm.` written `.norm.`
    assert {"model.layers.0.self_attn.norm.weight", "model.layers.2.self_attn.compressor.norm.weight",
            "model.layers.2.self_attn.compressor.indexer.norm.weight", "model.layers.0.mlp.experts.gate_up_proj",
            "lm_head.weight"} <= resaved
    assert not any(".kv_norm." in n for n in resaved)


@pytest.mark.parametrize("kind", ["built", "resaved"])
def test_transformers_saved_checkpoints_load_exactly(saved_by_transformers, tiny_model, kind):
    loaded = load_model(saved_by_transformers[kind], progress=False)
    assert loaded.mtp is None  # transformers keeps no MTP layer
    ref = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("mtp.")}
    assert loaded.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())


def test_transformers_saved_checkpoint_generates_like_the_oracle(saved_by_transformers, oracle):
    ids = random_prompt(150, seed=8)
    with torch.no_grad():
        theirs = oracle.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=None, pad_token_id=1)[0, len(ids):].tolist()
    model = load_model(saved_by_transformers["built"], progress=False)
    assert greedy_generate(model, ids, 8) == theirs


def test_a_tensor_supplied_twice_is_named(tiny_official, tmp_path):
    # the same parameter under two spellings (official and transformers) must not silently win
    _rewrite(tiny_official, tmp_path, lambda raw: raw.__setitem__("model.norm.weight", raw["norm.weight"].clone()))
    with pytest.raises(CheckpointError, match=r"tensors '(model\.)?norm\.weight' and '(model\.)?norm\.weight' "
                                              r"both fill norm\.weight"):
        load_model(tmp_path, progress=False)


# ---- native weights ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def native_model(tiny_official):
    return load_model(tiny_official, progress=False, weight_format="native")


def test_native_load_keeps_the_stored_bytes(tiny_official, native_model, tiny_model):
    raw = read_all(tiny_official)
    state = native_model.state_dict()
    wq_a = native_model.layers[0].attn.wq_a
    assert isinstance(wq_a, Linear) and wq_a.quant == "fp8"
    assert isinstance(native_model.layers[0].ffn.experts.w1, Linear)
    stored = {name: t for name, t in raw.items() if t.dtype in (torch.float8_e4m3fn, torch.int8, torch.float8_e8m0fnu)}
    for name, tensor in stored.items():
        m = re.match(r"^((?:layers|mtp)\.\d+)\.ffn\.experts\.(\d+)\.(w[123])\.(weight|scale)$", name)
        got = state[f"{m[1]}.ffn.experts.{m[3]}.{m[4]}"][int(m[2])] if m else state[name]
        assert got.dtype == tensor.dtype and torch.equal(got.view(torch.uint8), tensor.view(torch.uint8)), name
    # resident = the dense model with each quantised weight's fp32 copy traded for its stored bytes
    dense = tiny_model.state_dict()
    modules = {name.removesuffix(".scale") for name in state if name.endswith(".scale")}
    traded = sum(dense[n].numel() * 4 for m in modules for n in (m, f"{m}.weight") if n in dense)
    assert _nbytes(state.values()) == _nbytes(dense.values()) - traded + _nbytes(stored.values())


def test_native_linears_compute_what_the_dequantised_model_does(native_model, tiny_model):
    gen = torch.Generator().manual_seed(5)
    for path in ("layers.0.attn.wq_a", "layers.2.attn.indexer.wq_b", "layers.3.ffn.shared_experts.w2"):
        native, dense = native_model.get_submodule(path), tiny_model.get_submodule(path)
        x = torch.randn(37, dense.in_features, generator=gen)
        assert torch.equal(native(x), dense(x)), path
    wo_a, dense_wo_a = native_model.layers[4].attn.wo_a, tiny_model.layers[4].attn.wo_a.weight
    x = torch.randn(9, 2, dense_wo_a.shape[1], generator=gen)
    groups = dense_wo_a.view(2, -1, x.shape[-1])
    assert torch.equal(wo_a.grouped(x), torch.stack([x[:, g] @ groups[g].T for g in range(2)], dim=1))
    experts, dense_w2 = native_model.layers[5].ffn.experts.w2, tiny_model.layers[5].ffn.experts.w2
    x = torch.randn(6, dense_w2.shape[-1], generator=gen)
    counts = [2, 0, 0, 3, 0, 0, 1, 0]
    ref = torch.cat([x[:2] @ dense_w2[0].T, x[2:5] @ dense_w2[3].T, x[5:] @ dense_w2[6].T])
    assert torch.allclose(experts.experts(x, counts), ref, rtol=0, atol=1e-6)


def test_native_load_of_a_dense_checkpoint_keeps_it_dense(tiny_transformers, tiny_model):
    model = load_model(tiny_transformers, progress=False, weight_format="native")
    assert not any(isinstance(m, Linear) and m.quant for m in model.modules())
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="weight_format must be one of"):
        load_model(tiny_transformers, progress=False, weight_format="fp8")
