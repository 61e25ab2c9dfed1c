"""The DeepSeek-V4 model configuration.

One `ModelConfig` is read from an HF `config.json` in any of the naming schemes V4
checkpoints ship with:

* the official HF naming (`compress_ratios`, `num_hash_layers`, `rope_scaling`,
  `expert_dtype`, `quantization_config`),
* the transformers naming (`layer_types`, `mlp_layer_types`, nested `rope_parameters`
  with `main` / `compress` entries),
* the official `inference/config.json` `ModelArgs` names (`dim`, `n_layers`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

SWA, CSA, HCA = "swa", "csa", "hca"

_TRANSFORMERS_LAYER_TYPES = {
    "sliding_attention": SWA,
    "compressed_sparse_attention": CSA,
    "heavily_compressed_attention": HCA,
}

# official inference/config.json (ModelArgs) name -> HF name
_MODEL_ARGS_ALIASES = {
    "dim": "hidden_size",
    "moe_inter_dim": "moe_intermediate_size",
    "n_layers": "num_hidden_layers",
    "n_hash_layers": "num_hash_layers",
    "n_mtp_layers": "num_nextn_predict_layers",
    "n_heads": "num_attention_heads",
    "n_activated_experts": "num_experts_per_tok",
    "score_func": "scoring_func",
    "route_scale": "routed_scaling_factor",
    "rope_head_dim": "qk_rope_head_dim",
    "window_size": "sliding_window",
    "norm_eps": "rms_norm_eps",
}


class ConfigError(ValueError):
    """A config value is missing or inconsistent; the message names the field."""


@dataclass(frozen=True)
class YarnScaling:
    factor: float = 16.0
    original_max_position_embeddings: int = 65536
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    rope_head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    sliding_window: int
    compress_ratios: tuple[int, ...]  # one per layer: 0 (SWA), csa_ratio or hca_ratio
    num_hash_layers: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    routed_scaling_factor: float
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    csa_ratio: int = 4
    hca_ratio: int = 128
    scoring_func: str = "sqrtsoftplus"
    swiglu_limit: float = 10.0
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    yarn: YarnScaling | None = field(default_factory=YarnScaling)
    max_position_embeddings: int = 1048576
    bos_token_id: int = 0
    eos_token_id: int = 1
    num_nextn_predict_layers: int = 1
    expert_dtype: str | None = None
    quantization: dict | None = None

    def __post_init__(self) -> None:
        _validate(self)

    # ---- derived -------------------------------------------------------------------
    def ratio_of(self, layer: int) -> int:
        """Compression ratio of `layer`; the MTP layer (index `num_layers`) is sliding-window only."""
        return self.compress_ratios[layer] if layer < self.num_layers else 0

    def layer_kind(self, layer: int) -> str:
        ratio = self.ratio_of(layer)
        return SWA if ratio == 0 else CSA if ratio == self.csa_ratio else HCA

    @cached_property
    def layer_kinds(self) -> tuple[str, ...]:
        return tuple(self.layer_kind(i) for i in range(self.num_layers))

    @cached_property
    def ratios(self) -> tuple[int, ...]:
        """The distinct compression ratios of the model's layers, ascending."""
        return tuple(sorted({r for r in self.compress_ratios if r > 0}))

    def is_hash_layer(self, layer: int) -> bool:
        return layer < self.num_hash_layers

    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.rope_head_dim

    @property
    def min_page_size(self) -> int:
        """Smallest page that ends on a window boundary of every compressor in the model."""
        ratios = [r for r in set(self.compress_ratios) if r > 0]
        return math.lcm(*ratios) if ratios else 1

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- serialisation ---------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        """The official HF `config.json` form (readable by transformers as well)."""
        out: dict[str, Any] = {
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": 1,
            "head_dim": self.head_dim,
            "qk_rope_head_dim": self.rope_head_dim,
            "q_lora_rank": self.q_lora_rank,
            "o_groups": self.o_groups,
            "o_lora_rank": self.o_lora_rank,
            "sliding_window": self.sliding_window,
            "compress_ratios": list(self.compress_ratios) + [0] * self.num_nextn_predict_layers,
            "num_hash_layers": self.num_hash_layers,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "moe_intermediate_size": self.moe_intermediate_size,
            "routed_scaling_factor": self.routed_scaling_factor,
            "scoring_func": self.scoring_func,
            "norm_topk_prob": True,
            "topk_method": "noaux_tc",
            "swiglu_limit": self.swiglu_limit,
            "index_n_heads": self.index_n_heads,
            "index_head_dim": self.index_head_dim,
            "index_topk": self.index_topk,
            "hc_mult": self.hc_mult,
            "hc_sinkhorn_iters": self.hc_sinkhorn_iters,
            "hc_eps": self.hc_eps,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "compress_rope_theta": self.compress_rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_bias": False,
        }
        if (self.csa_ratio, self.hca_ratio) != (4, 128):
            out["compress_rates"] = {"compressed_sparse_attention": self.csa_ratio,
                                     "heavily_compressed_attention": self.hca_ratio}
        if self.yarn is not None:
            out["rope_scaling"] = {"type": "yarn", **dataclasses.asdict(self.yarn)}
        if self.expert_dtype is not None:
            out["expert_dtype"] = self.expert_dtype
        if self.quantization is not None:
            out["quantization_config"] = dict(self.quantization)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        return _parse(raw)

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config.json at {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return _parse(raw)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        try:
            return PRESETS[name]()
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ---- parsing ---------------------------------------------------------------------------

def _require(raw: dict, key: str) -> Any:
    if key not in raw or raw[key] is None:
        raise ConfigError(f"config field {key!r} is required")
    return raw[key]


def _int(raw: dict, key: str, default: Any = None) -> int:
    value = raw.get(key, default) if default is not None else _require(raw, key)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config field {key!r} must be an integer, got {value!r}")
    return value


def _float(raw: dict, key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config field {key!r} must be a number, got {value!r}")
    return float(value)


def _parse_layer_ratios(raw: dict, num_layers: int, csa: int, hca: int) -> tuple[int, ...]:
    if raw.get("layer_types") is not None:
        types = raw["layer_types"]
        if not isinstance(types, list):
            raise ConfigError("config field 'layer_types' must be a list")
        kinds = []
        for t in types[:num_layers]:
            if t not in _TRANSFORMERS_LAYER_TYPES:
                raise ConfigError(f"config field 'layer_types' has unknown entry {t!r}; "
                                  f"expected one of {sorted(_TRANSFORMERS_LAYER_TYPES)}")
            kinds.append(_TRANSFORMERS_LAYER_TYPES[t])
        ratios = [{SWA: 0, CSA: csa, HCA: hca}[k] for k in kinds]
        field_name = "layer_types"
    elif raw.get("compress_ratios") is not None:
        ratios = raw["compress_ratios"]
        if not isinstance(ratios, list):
            raise ConfigError("config field 'compress_ratios' must be a list")
        ratios = ratios[:num_layers]
        field_name = "compress_ratios"
    else:
        raise ConfigError("config needs 'compress_ratios' (official) or 'layer_types' (transformers)")
    if len(ratios) < num_layers:
        raise ConfigError(f"config field {field_name!r} has {len(ratios)} entries, "
                          f"fewer than num_hidden_layers={num_layers}")
    return tuple(int(r) for r in ratios)


def _parse_num_hash_layers(raw: dict, num_layers: int) -> int:
    mlp_types = raw.get("mlp_layer_types")
    if mlp_types is not None:
        if not isinstance(mlp_types, list) or any(t not in ("hash_moe", "moe") for t in mlp_types):
            raise ConfigError("config field 'mlp_layer_types' must list 'hash_moe' / 'moe' entries")
        n = sum(1 for t in mlp_types[:num_layers] if t == "hash_moe")
        if mlp_types[:n] != ["hash_moe"] * n:
            raise ConfigError("config field 'mlp_layer_types': hash_moe layers must come first")
        return n
    return _int(raw, "num_hash_layers", 3)


def _parse_rope(raw: dict) -> tuple[float, float, YarnScaling | None]:
    rope_theta = _float(raw, "rope_theta", 10000.0)
    compress_theta = _float(raw, "compress_rope_theta", 160000.0)
    scaling = raw.get("rope_scaling")
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("compress"), dict):
        main = params.get("main") or {}
        rope_theta = float(main.get("rope_theta", rope_theta))
        compress = params["compress"]
        compress_theta = float(compress.get("rope_theta", compress_theta))
        scaling = compress
    elif isinstance(params, dict) and scaling is None:
        scaling = params
    yarn = None
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "yarn":
            try:
                yarn = YarnScaling(
                    factor=float(scaling["factor"]),
                    original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
                    beta_fast=float(scaling.get("beta_fast", 32)),
                    beta_slow=float(scaling.get("beta_slow", 1)),
                )
            except KeyError as exc:
                raise ConfigError(f"config field 'rope_scaling' (yarn) lacks {exc.args[0]!r}") from None
        elif kind != "default":
            raise ConfigError(f"config field 'rope_scaling' has unsupported type {kind!r}")
    elif "rope_factor" in raw:  # official ModelArgs names
        yarn = YarnScaling(factor=float(raw["rope_factor"]),
                           original_max_position_embeddings=int(raw.get("original_seq_len", 65536)),
                           beta_fast=float(raw.get("beta_fast", 32)), beta_slow=float(raw.get("beta_slow", 1)))
    return rope_theta, compress_theta, yarn


def _parse(raw: dict) -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    raw = {_MODEL_ARGS_ALIASES.get(k, k): v for k, v in raw.items()}
    model_type = raw.get("model_type", "deepseek_v4")
    if model_type != "deepseek_v4":
        raise ConfigError(f"config field 'model_type' is {model_type!r}; Banyan serves 'deepseek_v4'")
    num_layers = _int(raw, "num_hidden_layers")
    rates = raw.get("compress_rates") or {}
    csa = int(rates.get("compressed_sparse_attention", raw.get("compress_rate_csa", 4)))
    hca = int(rates.get("heavily_compressed_attention", raw.get("compress_rate_hca", 128)))
    head_dim = _int(raw, "head_dim", 512)
    if raw.get("qk_rope_head_dim") is not None:
        rope_head_dim = _int(raw, "qk_rope_head_dim")
    elif raw.get("partial_rotary_factor") is not None:
        rope_head_dim = int(round(head_dim * _float(raw, "partial_rotary_factor", 0.125)))
    else:
        rope_head_dim = 64
    rope_theta, compress_theta, yarn = _parse_rope(raw)
    quant = raw.get("quantization_config")
    expert_dtype = raw.get("expert_dtype") or (quant or {}).get("expert_dtype")
    eos = raw.get("eos_token_id", 1)
    return ModelConfig(
        vocab_size=_int(raw, "vocab_size"),
        hidden_size=_int(raw, "hidden_size"),
        num_layers=num_layers,
        num_heads=_int(raw, "num_attention_heads"),
        head_dim=head_dim,
        rope_head_dim=rope_head_dim,
        q_lora_rank=_int(raw, "q_lora_rank"),
        o_groups=_int(raw, "o_groups"),
        o_lora_rank=_int(raw, "o_lora_rank"),
        sliding_window=_int(raw, "sliding_window", 128),
        compress_ratios=_parse_layer_ratios(raw, num_layers, csa, hca),
        num_hash_layers=_parse_num_hash_layers(raw, num_layers),
        n_routed_experts=_int(raw, "n_routed_experts"),
        n_shared_experts=_int(raw, "n_shared_experts", 1),
        num_experts_per_tok=_int(raw, "num_experts_per_tok"),
        moe_intermediate_size=_int(raw, "moe_intermediate_size"),
        routed_scaling_factor=_float(raw, "routed_scaling_factor", 1.0),
        index_n_heads=_int(raw, "index_n_heads", 64),
        index_head_dim=_int(raw, "index_head_dim", 128),
        index_topk=_int(raw, "index_topk", 512),
        csa_ratio=csa,
        hca_ratio=hca,
        scoring_func=str(raw.get("scoring_func", "sqrtsoftplus")),
        swiglu_limit=_float(raw, "swiglu_limit", 10.0),
        hc_mult=_int(raw, "hc_mult", 4),
        hc_sinkhorn_iters=_int(raw, "hc_sinkhorn_iters", 20),
        hc_eps=_float(raw, "hc_eps", 1e-6),
        rms_norm_eps=_float(raw, "rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        compress_rope_theta=compress_theta,
        yarn=yarn,
        max_position_embeddings=_int(raw, "max_position_embeddings", 1048576),
        bos_token_id=_int(raw, "bos_token_id", 0),
        eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
        num_nextn_predict_layers=_int(raw, "num_nextn_predict_layers", 1),
        expert_dtype=expert_dtype,
        quantization=quant,
    )


def _validate(cfg: ModelConfig) -> None:
    positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "rope_head_dim",
                "q_lora_rank", "o_groups", "o_lora_rank", "sliding_window", "n_routed_experts",
                "num_experts_per_tok", "moe_intermediate_size", "index_n_heads", "index_head_dim",
                "index_topk", "hc_mult", "hc_sinkhorn_iters", "csa_ratio", "hca_ratio")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"config field {name!r} must be positive, got {getattr(cfg, name)}")
    if cfg.rope_head_dim % 2 or cfg.rope_head_dim >= cfg.head_dim:
        raise ConfigError(f"config field 'qk_rope_head_dim' ({cfg.rope_head_dim}) must be even and "
                          f"smaller than head_dim ({cfg.head_dim})")
    if cfg.rope_head_dim >= cfg.index_head_dim:
        raise ConfigError(f"config field 'index_head_dim' ({cfg.index_head_dim}) must exceed "
                          f"qk_rope_head_dim ({cfg.rope_head_dim})")
    if cfg.num_heads % cfg.o_groups:
        raise ConfigError(f"config field 'o_groups' ({cfg.o_groups}) must divide "
                          f"num_attention_heads ({cfg.num_heads})")
    if cfg.num_experts_per_tok > cfg.n_routed_experts:
        raise ConfigError(f"config field 'num_experts_per_tok' ({cfg.num_experts_per_tok}) exceeds "
                          f"n_routed_experts ({cfg.n_routed_experts})")
    if cfg.n_shared_experts not in (0, 1):
        raise ConfigError(f"config field 'n_shared_experts' must be 0 or 1, got {cfg.n_shared_experts}")
    if cfg.csa_ratio == cfg.hca_ratio:
        raise ConfigError("config field 'compress_rates': CSA and HCA ratios must differ")
    if len(cfg.compress_ratios) != cfg.num_layers:
        raise ConfigError(f"config field 'compress_ratios' needs {cfg.num_layers} entries, "
                          f"got {len(cfg.compress_ratios)}")
    allowed = {0, cfg.csa_ratio, cfg.hca_ratio}
    bad = [r for r in cfg.compress_ratios if r not in allowed]
    if bad:
        raise ConfigError(f"config field 'compress_ratios' has ratios {bad}; allowed: {sorted(allowed)}")
    if not 0 <= cfg.num_hash_layers <= cfg.num_layers:
        raise ConfigError(f"config field 'num_hash_layers' ({cfg.num_hash_layers}) must be within "
                          f"[0, num_hidden_layers={cfg.num_layers}]")
    if cfg.scoring_func != "sqrtsoftplus":
        raise ConfigError(f"config field 'scoring_func' is {cfg.scoring_func!r}; V4 uses 'sqrtsoftplus'")
    if cfg.expert_dtype not in (None, "fp4", "fp8", "bf16"):
        raise ConfigError(f"config field 'expert_dtype' is {cfg.expert_dtype!r}; expected fp4, fp8 or bf16")
    if not 0 <= cfg.bos_token_id < cfg.vocab_size or not 0 <= cfg.eos_token_id < cfg.vocab_size:
        raise ConfigError("config fields 'bos_token_id' / 'eos_token_id' must be valid token ids")


# ---- presets (values from docs/dsv4-spec.md §2) ----------------------------------------

_FP8_QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
              "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}


def _flash() -> ModelConfig:
    return ModelConfig(
        vocab_size=129280, hidden_size=4096, num_layers=43, num_heads=64, head_dim=512, rope_head_dim=64,
        q_lora_rank=1024, o_groups=8, o_lora_rank=1024, sliding_window=128,
        compress_ratios=(0, 0) + (4, 128) * 20 + (4,), num_hash_layers=3, n_routed_experts=256,
        n_shared_experts=1, num_experts_per_tok=6, moe_intermediate_size=2048, routed_scaling_factor=1.5,
        index_n_heads=64, index_head_dim=128, index_topk=512, expert_dtype="fp4", quantization=dict(_FP8_QUANT),
    )


def _pro() -> ModelConfig:
    return _flash().replace(
        hidden_size=7168, num_layers=61, num_heads=128, q_lora_rank=1536, o_groups=16, index_topk=1024,
        n_routed_experts=384, moe_intermediate_size=3072, routed_scaling_factor=2.5,
        compress_ratios=(128, 128) + (4, 128) * 29 + (4,),
    )


def _tiny() -> ModelConfig:
    """A small model with every V4 feature: SWA, CSA and HCA layers, hash and top-k MoE."""
    return ModelConfig(
        vocab_size=129280, hidden_size=64, num_layers=6, num_heads=4, head_dim=128, rope_head_dim=32,
        q_lora_rank=64, o_groups=2, o_lora_rank=32, sliding_window=128,
        compress_ratios=(0, 0, 4, 128, 4, 128), num_hash_layers=3, n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=64, routed_scaling_factor=1.5,
        index_n_heads=16, index_head_dim=64, index_topk=16, max_position_embeddings=65536,
    )


PRESETS = {"tiny": _tiny, "flash": _flash, "pro": _pro}
