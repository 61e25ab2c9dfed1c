"""Tensor names of V4 checkpoints, mapped onto one canonical table.

Banyan's parameter names are the official ones, except that routed experts are stacked:
`layers.{i}.ffn.experts.w1` is `[E, I, D]`. `_TOP` and `_LAYER` pair each official name
with its transformers name; every layout a user brings spells one of the two:

* official / HF hub: `layers.{i}.attn.wq_a.weight` (+ `.scale`), `embed.weight`,
  `layers.{i}.ffn.experts.{e}.w1.weight`;
* transformers 5.23: `model.layers.{i}.self_attn.q_a_proj.weight`, `model.embed_tokens.weight`,
  fused `model.layers.{i}.mlp.experts.gate_up_proj` (`[E, 2I, D]`, w1 rows first);
* transformers >= 5.24 `save_pretrained`: it undoes its load-time renames, so a model it
  built writes official layer names under `model.` (`model.layers.{i}.attn.wq_a.weight`,
  per-expert tensors) with top-level tensors in transformers naming (`model.embed_tokens.weight`
  but `head.weight`); a model it loaded from transformers names writes those names back. Both
  spell `.kv_norm.` as `.norm.` (the reverse of its `.norm.` -> `.kv_norm.` rename), so the
  attention's `kv_norm` becomes `attn.norm` / `self_attn.norm`.

Hence: an optional `model.` prefix, then an official or transformers name, either with
`.kv_norm.` written `.norm.`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..kernels.quant import QuantizedWeight
from .config import ModelConfig

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

# transformers >= 5.24 save_pretrained writes `.kv_norm.` as `.norm.`
_SAVED_SPELLING = (".kv_norm.", ".norm.")


def _spellings(*names: str) -> set[str]:
    return {s for n in names for s in (n, n.replace(*_SAVED_SPELLING))}


def _lookup(table: dict[str, str]) -> dict[str, str]:
    """Every accepted spelling (without a `model.` prefix) -> official name."""
    out: dict[str, str] = {}
    for official, hf in table.items():
        for spelling in _spellings(official, hf.removeprefix("model.")):
            if out.setdefault(spelling, official) != official:
                raise AssertionError(f"{spelling!r} would name both {out[spelling]!r} and {official!r}")
    return out


_TOP_NAMES = _lookup(_TOP)
_LAYER_NAMES = _lookup(_LAYER)

_LAYER_RE = re.compile(r"^((?:layers|mtp)\.\d+)\.(.+)$")  # (layer or MTP layer prefix, rest)
_EXPERT_RE = re.compile(r"^(?:ffn|mlp)\.experts\.(\d+)\.(w[123])\.weight$")
_FUSED_EXPERTS_RE = re.compile(r"^mlp\.experts\.(gate_up_proj|down_proj)$")
_STACKED_RE = re.compile(r"^(?:layers|mtp)\.\d+\.ffn\.experts\.w[123](?:\.weight|\.scale)?$")

# Linears stored as FP8 (+ 128x128 E8M0 scale) in the official checkpoint.
FP8_LINEARS = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight", "attn.wo_b.weight",
               "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight", "ffn.shared_experts.w2.weight",
               "ffn.shared_experts.w3.weight", "e_proj.weight", "h_proj.weight")
# The MTP layer's own tensors (next to a block's); `emb.*` and `head.*` copies of the shared
# embedding and head are skipped, as the official convert.py does.
MTP_OWN = ("e_proj.weight", "h_proj.weight", "enorm.weight", "hnorm.weight", "norm.weight", "hc_head_fn",
           "hc_head_base", "hc_head_scale")
_MTP_SHARED_RE = re.compile(r"^mtp\.\d+\.(?:emb\..+|head\.weight)$")
# Tensors of a DSpark drafter (V4 0731 and later), which reuse the `mtp.*` names for other layers.
_DSPARK_RE = re.compile(r"^mtp\.\d+\.(?:main_proj|main_norm|markov_head|confidence_head)\.")
# Kept in fp32 by the official checkpoint (and by Banyan at any model dtype).
FP32_SUFFIXES = ("_fn", "_base", "_scale", "attn_sink", ".ape", "gate.bias")


@dataclass(frozen=True)
class Target:
    """Where (part of) a checkpoint tensor goes: `param[index] = take(tensor)`."""

    param: str
    index: int | None = None  # expert index for stacked expert params
    rows: slice | None = None  # rows of the checkpoint tensor (fused gate_up halves)

    def take(self, weight: QuantizedWeight) -> QuantizedWeight:
        return weight if self.rows is None else weight.select_rows(self.rows.start, self.rows.stop)


def targets(name: str, moe_intermediate_size: int) -> list[Target] | None:
    """Banyan parameters fed by checkpoint tensor `name` (any layout); None if unknown."""
    stem = name.removeprefix("model.")
    if stem in _TOP_NAMES:
        return [Target(_TOP_NAMES[stem])]
    if (m := _LAYER_RE.match(stem)) is None:
        return None
    base, rest = m[1], m[2]
    if rest in _LAYER_NAMES:
        return [Target(f"{base}.{_LAYER_NAMES[rest]}")]
    if base.startswith("mtp.") and rest in MTP_OWN:
        return [Target(stem)]
    if e := _EXPERT_RE.match(rest):
        return [Target(f"{base}.ffn.experts.{e[2]}", index=int(e[1]))]
    if f := _FUSED_EXPERTS_RE.match(rest):
        experts = f"{base}.ffn.experts"
        if f[1] == "down_proj":
            return [Target(f"{experts}.w2")]
        i = moe_intermediate_size
        return [Target(f"{experts}.w1", rows=slice(0, i)), Target(f"{experts}.w3", rows=slice(i, 2 * i))]
    return None


# Tensor-parallel split dim of Banyan tensors (the official layout, mtp-and-parallelism.md §B1):
# query heads of `wq_b` and the sinks, output groups of `wo_a`, input columns of `wo_b`,
# and the intermediate dim of the shared expert. Everything else in a layer is replicated.
_TP_DIMS = {"attn.wq_b.weight": 0, "attn.attn_sink": 0, "attn.wo_a.weight": 0, "attn.wo_b.weight": 1,
            "ffn.shared_experts.w1.weight": 0, "ffn.shared_experts.w3.weight": 0,
            "ffn.shared_experts.w2.weight": 1}
# Routed experts under TP alone: the intermediate dim of each expert's matrix.
_EXPERT_TP_DIMS = {"w1": 0, "w3": 0, "w2": 1}
_VOCAB_PARALLEL = ("embed.weight", "head.weight")


def tp_split_dim(param: str, expert_parallel: bool) -> int | None:
    """The dim of Banyan tensor `param` that tensor parallelism splits (per expert matrix for
    stacked experts), or None if every rank holds all of it. Under expert parallelism the
    experts are partitioned instead, and the shared expert is replicated."""
    if param in _VOCAB_PARALLEL:
        return 0
    m = _LAYER_RE.match(param)
    if m is None:
        return None
    rest = m[2]
    if is_stacked_expert(param):
        return None if expert_parallel else _EXPERT_TP_DIMS[rest.split(".")[2]]  # ffn.experts.w1[.weight]
    if expert_parallel and rest.startswith("ffn.shared_experts."):
        return None
    return _TP_DIMS.get(rest)


def to_transformers(name: str) -> str:
    """Official (non-expert) name -> transformers 5.23 name."""
    if name in _TOP:
        return _TOP[name]
    m = _LAYER_RE.match(name)
    if m is None or m[2] not in _LAYER or m[1].startswith("mtp."):  # transformers has no MTP names
        raise KeyError(f"no transformers name for {name!r}")
    return f"model.{m[1]}.{_LAYER[m[2]]}"


def is_stacked_expert(param: str) -> bool:
    """Banyan's stacked routed-expert tensors (`[E, ...]`, filled one expert at a time)."""
    return _STACKED_RE.match(param) is not None


def expert_format(cfg: ModelConfig) -> str:
    """Routed experts are FP4 in V4 checkpoints (`expert_dtype: fp4`); a quantised config
    without it (V4-Flash-Base) has FP8 experts."""
    return "fp8" if cfg.quantization and cfg.expert_dtype != "fp4" else "fp4"


def stored_format(name: str, cfg: ModelConfig) -> str:
    """How the official checkpoint stores Banyan tensor `name`: 'fp8', 'fp4', or the dtype
    of an unquantised tensor ('bf16', 'fp32', 'int64')."""
    if name.endswith("tid2eid"):
        return "int64"
    if name.endswith(FP32_SUFFIXES):
        return "fp32"
    if is_stacked_expert(name):
        return expert_format(cfg)
    m = _LAYER_RE.match(name)
    return "fp8" if m is not None and m[2] in FP8_LINEARS else "bf16"


def scale_names(weight_name: str) -> tuple[str, ...]:
    """Possible names of a quantised weight's scale: official `.scale`, transformers `.weight_scale_inv`."""
    stem = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return (f"{stem}.scale", f"{stem}.weight_scale_inv", f"{weight_name}_scale_inv")


def is_mtp(name: str) -> bool:
    return name.removeprefix("model.").startswith("mtp.")


def is_ignored(name: str, with_mtp: bool) -> bool:
    """Tensors the model does not load: every `mtp.*` one without the MTP layer, and the MTP's
    copies of the shared embedding and head with it."""
    return is_mtp(name) and (not with_mtp or _MTP_SHARED_RE.match(name.removeprefix("model.")) is not None)


def mtp_kind(names: list[str]) -> str | None:
    """What a checkpoint's `mtp.*` tensors are: "mtp" (V4's MTP layer), "dspark" (a DSpark
    drafter reusing the names), or None (none at all)."""
    stems = [n.removeprefix("model.") for n in names if is_mtp(n)]
    if not stems:
        return None
    if any(_DSPARK_RE.match(s) for s in stems) or "mtp.0.enorm.weight" not in stems:
        return "dspark"
    return "mtp"
