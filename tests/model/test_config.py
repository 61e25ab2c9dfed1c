"""Config parsing in every naming scheme, presets, and clear errors."""

from __future__ import annotations

import json

import pytest

from banyan.model.config import ConfigError, ModelConfig

# docs/dsv4-spec.md §2.1, verbatim
FLASH_HF_JSON = """{"architectures":["DeepseekV4ForCausalLM"],"model_type":"deepseek_v4","attention_bias":false,"attention_dropout":0.0,
 "bos_token_id":0,"eos_token_id":1,"expert_dtype":"fp4","hc_eps":1e-06,"hc_mult":4,"hc_sinkhorn_iters":20,
 "head_dim":512,"hidden_act":"silu","hidden_size":4096,"index_head_dim":128,"index_n_heads":64,"index_topk":512,
 "initializer_range":0.02,"max_position_embeddings":1048576,"moe_intermediate_size":2048,"n_routed_experts":256,
 "n_shared_experts":1,"norm_topk_prob":true,"num_attention_heads":64,"num_experts_per_tok":6,"num_hidden_layers":43,
 "num_hash_layers":3,"num_key_value_heads":1,"num_nextn_predict_layers":1,"o_groups":8,"o_lora_rank":1024,
 "q_lora_rank":1024,"qk_rope_head_dim":64,
 "quantization_config":{"activation_scheme":"dynamic","fmt":"e4m3","quant_method":"fp8","scale_fmt":"ue8m0","weight_block_size":[128,128]},
 "rms_norm_eps":1e-06,
 "rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":16,"original_max_position_embeddings":65536,"type":"yarn"},
 "rope_theta":10000,"routed_scaling_factor":1.5,"scoring_func":"sqrtsoftplus","sliding_window":128,"swiglu_limit":10.0,
 "tie_word_embeddings":false,"topk_method":"noaux_tc","torch_dtype":"bfloat16","transformers_version":"4.57.1",
 "use_cache":true,"vocab_size":129280,"compress_rope_theta":160000,
 "compress_ratios":[0,0,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,128,4,0]}"""


def test_flash_preset_layer_schedule():
    cfg = ModelConfig.preset("flash")
    kinds = cfg.layer_kinds
    assert len(kinds) == 43
    assert kinds[:2] == ("swa", "swa")
    assert all(kinds[i] == "csa" for i in range(2, 43, 2)) and sum(k == "csa" for k in kinds) == 21
    assert all(kinds[i] == "hca" for i in range(3, 43, 2)) and sum(k == "hca" for k in kinds) == 20
    assert [cfg.is_hash_layer(i) for i in range(4)] == [True, True, True, False]
    assert cfg.min_page_size == 128


def test_pro_preset_layer_schedule():
    cfg = ModelConfig.preset("pro")
    kinds = cfg.layer_kinds
    assert len(kinds) == 61 and kinds[:2] == ("hca", "hca")
    assert all(kinds[i] == "csa" for i in range(2, 61, 2)) and sum(k == "csa" for k in kinds) == 30
    assert sum(k == "hca" for k in kinds) == 31
    assert (cfg.hidden_size, cfg.num_heads, cfg.q_lora_rank, cfg.o_groups, cfg.index_topk) == (7168, 128, 1536, 16, 1024)
    assert (cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.routed_scaling_factor) == (384, 3072, 2.5)


def test_official_hf_config_parses_to_flash_preset():
    cfg = ModelConfig.from_dict(json.loads(FLASH_HF_JSON))
    assert cfg == ModelConfig.preset("flash")
    assert cfg.yarn.factor == 16 and cfg.yarn.original_max_position_embeddings == 65536
    assert cfg.compress_rope_theta == 160000 and cfg.expert_dtype == "fp4"


def test_transformers_naming_parses_to_same_config():
    from transformers import DeepseekV4Config

    flash = json.loads(FLASH_HF_JSON)
    hf = DeepseekV4Config(**{k: v for k, v in flash.items() if k not in ("architectures", "model_type",
                                                                         "transformers_version", "torch_dtype")})
    raw = hf.to_dict()
    assert "layer_types" in raw and "mlp_layer_types" in raw and "compress_ratios" not in raw
    assert isinstance(raw["rope_parameters"]["compress"], dict)
    cfg = ModelConfig.from_dict(raw)
    assert cfg.layer_kinds == ModelConfig.preset("flash").layer_kinds
    assert cfg.num_hash_layers == 3 and cfg.rope_head_dim == 64
    assert cfg.yarn == ModelConfig.preset("flash").yarn
    assert (cfg.rope_theta, cfg.compress_rope_theta) == (10000.0, 160000.0)


def test_model_args_naming_parses():
    raw = {"vocab_size": 129280, "dim": 4096, "moe_inter_dim": 2048, "n_layers": 43, "n_hash_layers": 3,
           "n_heads": 64, "n_routed_experts": 256, "n_shared_experts": 1, "n_activated_experts": 6,
           "score_func": "sqrtsoftplus", "route_scale": 1.5, "q_lora_rank": 1024, "head_dim": 512,
           "rope_head_dim": 64, "o_groups": 8, "o_lora_rank": 1024, "window_size": 128,
           "compress_ratios": list(ModelConfig.preset("flash").compress_ratios) + [0],
           "rope_factor": 16, "original_seq_len": 65536, "index_topk": 512}
    cfg = ModelConfig.from_dict(raw)
    assert cfg.layer_kinds == ModelConfig.preset("flash").layer_kinds
    assert cfg.routed_scaling_factor == 1.5 and cfg.yarn.factor == 16


def test_round_trip_through_hf_dict():
    for name in ("tiny", "flash", "pro"):
        cfg = ModelConfig.preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg


def test_tiny_config_is_readable_by_transformers():
    from transformers import DeepseekV4Config

    cfg = ModelConfig.preset("tiny")
    raw = cfg.to_hf_dict()
    hf = DeepseekV4Config(**{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    assert hf.layer_types == ["sliding_attention", "sliding_attention", "compressed_sparse_attention",
                              "heavily_compressed_attention", "compressed_sparse_attention",
                              "heavily_compressed_attention"]
    assert hf.qk_rope_head_dim == cfg.rope_head_dim


@pytest.mark.parametrize("edit, field", [
    (lambda c: c.pop("hidden_size"), "hidden_size"),
    (lambda c: c.__setitem__("hidden_size", "big"), "hidden_size"),
    (lambda c: c.__setitem__("o_groups", 7), "o_groups"),
    (lambda c: c.__setitem__("compress_ratios", [0, 4, 64]), "compress_ratios"),
    (lambda c: c.__setitem__("compress_ratios", [0, 0, 4, 128, 4, 96] + [4] * 40), "compress_ratios"),
    (lambda c: c.__setitem__("num_experts_per_tok", 300), "num_experts_per_tok"),
    (lambda c: c.__setitem__("qk_rope_head_dim", 63), "qk_rope_head_dim"),
    (lambda c: c.__setitem__("scoring_func", "softmax"), "scoring_func"),
    (lambda c: c.__setitem__("model_type", "llama"), "model_type"),
    (lambda c: c.__setitem__("rope_scaling", {"type": "yarn"}), "rope_scaling"),
    (lambda c: c.__setitem__("layer_types", ["sliding_attention", "full_attention"]), "layer_types"),
])
def test_bad_config_names_the_field(edit, field):
    raw = json.loads(FLASH_HF_JSON)
    edit(raw)
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(raw)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_json(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path)
