"""Tensor names of V4 checkpoints: official layout <-> transformers layout.

Banyan's own parameter names are the official ones, except that routed experts are
stacked: `layers.{i}.ffn.experts.w1` is `[E, I, D]` where the official checkpoint has
`layers.{i}.ffn.experts.{e}.w1.weight` and transformers has a fused
`model.layers.{i}.mlp.experts.gate_up_proj` (`[E, 2I, D]`, w1 rows first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_TOP = {
    "embed.weight": "model.embed_tokens.weight",
    "head.weight": "lm_head.weight",
    "norm.weight": "model.norm.weight",
    "hc_head_fn": "model.hc_head.hc_fn",
    "hc_head_base": "model.hc_head.hc_base",
    "hc_head_scale": "model.hc_head.hc_scale",
}

_COMPRESSOR = {"wkv.weight": "kv_proj.weight", "wgate.weight": "gate_proj.weight",
               "norm.weight": "kv_norm.weight", "ape": "position_bias"}

_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **{f"hc_{blk}_{p}": f"{blk}_hc.{p}" for blk in ("attn", "ffn") for p in ("fn", "base", "scale")},
    "attn.attn_sink": "self_attn.sinks",
    "attn.wq_a.weight": "self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "self_attn.q_a_norm.weight",
    "attn.wq_b.weight": "self_attn.q_b_proj.weight",
    "attn.wkv.weight": "self_attn.kv_proj.weight",
    "attn.kv_norm.weight": "self_attn.kv_norm.weight",
    "attn.wo_a.weight": "self_attn.o_a_proj.weight",
    "attn.wo_b.weight": "self_attn.o_b_proj.weight",
    **{f"attn.compressor.{k}": f"self_attn.compressor.{v}" for k, v in _COMPRESSOR.items()},
    **{f"attn.indexer.compressor.{k}": f"self_attn.compressor.indexer.{v}" for k, v in _COMPRESSOR.items()},
    "attn.indexer.wq_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
    "attn.indexer.weights_proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
    "ffn.gate.weight": "mlp.gate.weight",
    "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
    "ffn.gate.tid2eid": "mlp.gate.tid2eid",
    "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
    "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
}
_LAYER_FROM_HF = {v: k for k, v in _LAYER.items()}
_TOP_FROM_HF = {v: k for k, v in _TOP.items()}

_OFFICIAL_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_OFFICIAL_EXPERT = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")

# Linears stored as FP8 (+ 128x128 E8M0 scale) in the official checkpoint.
FP8_LINEARS = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight", "attn.wo_b.weight",
               "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight", "ffn.shared_experts.w2.weight",
               "ffn.shared_experts.w3.weight")


@dataclass(frozen=True)
class Target:
    """Where (part of) a checkpoint tensor goes: `param[index] = take(tensor)`."""

    param: str
    index: int | None = None  # expert index for stacked expert params
    rows: slice | None = None  # rows of the checkpoint tensor (fused gate_up halves)

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.rows is None else tensor[:, self.rows]


def is_transformers_name(name: str) -> bool:
    return name.startswith("model.") or name.startswith("lm_head.")


def targets(name: str, moe_intermediate_size: int) -> list[Target] | None:
    """Banyan parameters fed by checkpoint tensor `name` (either layout); None if unknown."""
    if name in _TOP:
        return [Target(name)]
    if name in _TOP_FROM_HF:
        return [Target(_TOP_FROM_HF[name])]
    if m := _OFFICIAL_EXPERT.match(name):
        return [Target(f"layers.{m[1]}.ffn.experts.{m[3]}", index=int(m[2]))]
    if m := _HF_EXPERTS.match(name):
        base = f"layers.{m[1]}.ffn.experts"
        if m[2] == "down_proj":
            return [Target(f"{base}.w2")]
        i = moe_intermediate_size
        return [Target(f"{base}.w1", rows=slice(0, i)), Target(f"{base}.w3", rows=slice(i, 2 * i))]
    if (m := _OFFICIAL_LAYER.match(name)) and m[2] in _LAYER:
        return [Target(name)]
    if (m := _HF_LAYER.match(name)) and m[2] in _LAYER_FROM_HF:
        return [Target(f"layers.{m[1]}.{_LAYER_FROM_HF[m[2]]}")]
    return None


def to_transformers(name: str) -> str:
    """Official (non-expert) name -> transformers name."""
    if name in _TOP:
        return _TOP[name]
    m = _OFFICIAL_LAYER.match(name)
    if m is None or m[2] not in _LAYER:
        raise KeyError(f"no transformers name for {name!r}")
    return f"model.layers.{m[1]}.{_LAYER[m[2]]}"


def is_fp8_linear(name: str) -> bool:
    m = _OFFICIAL_LAYER.match(name)
    return m is not None and m[2] in FP8_LINEARS


def scale_names(weight_name: str) -> tuple[str, ...]:
    """Possible names of a quantised weight's scale: official `.scale`, transformers `.weight_scale_inv`."""
    stem = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return (f"{stem}.scale", f"{stem}.weight_scale_inv", f"{weight_name}_scale_inv")


def is_ignored(name: str) -> bool:
    """MTP tensors (and their scales) are not part of the main model."""
    return name.startswith("mtp.") or name.startswith("model.mtp.") or ".mtp." in name
