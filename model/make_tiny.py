"""Write a random-weight tiny DeepSeek-V4 checkpoint.

    python -m banyan.model.make_tiny OUT [--layout official|transformers] [--seed N]

Every weight is drawn once and rounded to what the official format can hold (bf16, or
FP8/FP4 with power-of-two block scales), so both layouts of the same seed describe the
same model exactly. The official layout stores FP8 linears and FP4 experts with E8M0
scales; the transformers layout stores the dequantised values as transformers names them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..kernels.quant import dequantize_fp4, dequantize_fp8, quantize_fp4, quantize_fp8
from .checkpoint_names import FP32_SUFFIXES, is_mtp, stored_format, to_transformers
from .config import ModelConfig
from .network import DeepseekV4

OFFICIAL_QUANTIZATION = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                         "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}


def _random_state(cfg: ModelConfig, seed: int, mtp: bool) -> dict[str, torch.Tensor]:
    """Official-name tensors of a random model (experts stacked), in float32. The MTP layer's
    tensors come last, so the main model's values do not depend on `mtp`."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DeepseekV4(cfg, mtp=mtp).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("tid2eid"):
            state[name] = torch.argsort(torch.rand(cfg.vocab_size, cfg.n_routed_experts, generator=gen),
                                        dim=-1)[:, : cfg.num_experts_per_tok].contiguous()
        elif name.endswith("norm.weight"):
            state[name] = normal(shape, 0.1, 1.0)
        elif name.endswith(("_fn",)):
            state[name] = normal(shape, 0.05)
        elif name.endswith(("_scale",)):
            state[name] = normal(shape, 0.2, 1.0)
        elif name.endswith(("_base", "attn_sink", ".ape", "gate.bias")):
            state[name] = normal(shape, 0.5)
        elif name == "embed.weight":
            state[name] = normal(shape, 1.0)
        else:  # matrices: keep activations O(1)
            state[name] = normal(shape, shape[-1] ** -0.5)
    return state


def official_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` as the official layout's config.json states it: FP8 linears, FP4 experts."""
    return cfg.replace(expert_dtype="fp4", quantization=dict(OFFICIAL_QUANTIZATION))


def _round_to_checkpoint(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Snap every value to what the official checkpoint format represents exactly."""
    out = {}
    for name, t in state.items():
        stored = stored_format(name, cfg)
        if stored in ("int64", "fp32"):
            out[name] = t
        elif stored == "fp8":
            out[name] = dequantize_fp8(*quantize_fp8(t))
        elif stored == "fp4":
            out[name] = torch.stack([dequantize_fp4(*quantize_fp4(w)) for w in t])
        else:
            out[name] = t.to(torch.bfloat16).float()
    return out


def official_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        stem = name[: -len(".weight")] if name.endswith(".weight") else name
        stored = stored_format(name, cfg)
        if stored in ("int64", "fp32"):
            out[name] = t
        elif stored == "fp8":
            out[name], out[f"{stem}.scale"] = quantize_fp8(t)
        elif stored == "fp4":
            base, which = name.rsplit(".", 1)
            for e, w in enumerate(t):
                q, s = quantize_fp4(w)
                out[f"{base}.{e}.{which}.weight"], out[f"{base}.{e}.{which}.scale"] = q, s
        else:
            out[name] = t.to(torch.bfloat16)
    return out


def _dense_official(name: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Official names, dequantised (bf16; fp32 tensors kept), experts one by one."""
    if ".ffn.experts.w" in name:
        base, which = name.rsplit(".", 1)
        return {f"{base}.{e}.{which}.weight": w.to(torch.bfloat16) for e, w in enumerate(t)}
    return {name: t if t.dtype == torch.long or name.endswith(FP32_SUFFIXES) else t.to(torch.bfloat16)}


def transformers_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Transformers names for the main model; the MTP layer keeps its official (hub) names,
    dequantised, as transformers has none for it (it skips `mtp.*` on load)."""
    out = {}
    for name, t in state.items():
        if is_mtp(name):
            out.update(_dense_official(name, t))
            continue
        if ".ffn.experts.w" in name:
            layer = name.split(".")[1]
            if name.endswith("w2"):
                out[f"model.layers.{layer}.mlp.experts.down_proj"] = t.to(torch.bfloat16)
            continue
        keep = t.dtype == torch.long or name.endswith(FP32_SUFFIXES)
        out[to_transformers(name)] = t if keep else t.to(torch.bfloat16)
    for layer in {n.split(".")[1] for n in state if ".ffn.experts.w1" in n}:
        w1, w3 = state[f"layers.{layer}.ffn.experts.w1"], state[f"layers.{layer}.ffn.experts.w3"]
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1).to(torch.bfloat16)
    return out


def tiny_state(cfg: ModelConfig, seed: int, mtp: bool = True) -> dict[str, torch.Tensor]:
    """The float32 values (official names, experts stacked) of the tiny model for `seed`."""
    return _round_to_checkpoint(_random_state(cfg, seed, mtp), official_config(cfg))


def make_tiny(out: str | Path, layout: str = "official", seed: int = 0,
              cfg: ModelConfig | None = None, mtp: bool = True) -> Path:
    """`mtp`: include the multi-token-prediction layer (`mtp.0.*`), as V4 checkpoints do."""
    cfg = cfg or ModelConfig.preset("tiny")
    if layout not in ("official", "transformers"):
        raise ValueError(f"layout must be 'official' or 'transformers', got {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = tiny_state(cfg, seed, mtp)
    if layout == "official":
        cfg = official_config(cfg)
        tensors = official_tensors(state, cfg)
    else:
        tensors = transformers_tensors(state, cfg)
        cfg = cfg.replace(expert_dtype=None, quantization=None)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to write config.json and model.safetensors into")
    parser.add_argument("--layout", choices=("official", "transformers"), default="official")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="tiny", help="config preset to randomise (default: tiny)")
    parser.add_argument("--no-mtp", action="store_true", help="leave out the MTP layer (mtp.0.*)")
    args = parser.parse_args(argv)
    path = make_tiny(args.out, args.layout, args.seed, ModelConfig.preset(args.preset), mtp=not args.no_mtp)
    print(f"wrote a random {args.preset} V4 checkpoint ({args.layout} layout, seed {args.seed}) to {path}")


if __name__ == "__main__":
    main()
