"""Load V4 weights from safetensors: official layout (FP8/FP4 + E8M0 scales) or the
transformers layout, single file or sharded, streamed shard by shard."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from ..kernels.quant import dequantize_fp4, dequantize_fp8
from .checkpoint_names import Target, is_ignored, scale_names, targets
from .config import ModelConfig
from .network import DeepseekV4

INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """The checkpoint does not fit the model; the message names the tensor."""


def checkpoint_shards(path: Path) -> dict[str, Path]:
    """Tensor name -> shard file."""
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / shard for name, shard in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {path}")
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(f, framework="pt") as handle:
            out.update({name: f for name in handle.keys()})
    return out


def _dequantize(name: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    try:
        if weight.dtype == torch.int8 or weight.dtype == torch.uint8:
            return dequantize_fp4(weight, scale)
        return dequantize_fp8(weight, scale)
    except ValueError as exc:
        raise CheckpointError(f"tensor {name!r}: {exc}") from None


class _Reader:
    """Opens shards lazily; a tensor's scale may live in another shard."""

    def __init__(self, shards: dict[str, Path]) -> None:
        self.shards = shards
        self._handles: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        f = self.shards[name]
        if f not in self._handles:
            self._handles[f] = safe_open(f, framework="pt")
        return self._handles[f].get_tensor(name)

    def scale_of(self, name: str) -> str | None:
        return next((s for s in scale_names(name) if s in self.shards), None)

    def close(self) -> None:
        self._handles.clear()


def load_weights(model: DeepseekV4, path: str | Path, progress: bool = True) -> None:
    """Fill `model` from the checkpoint at `path`, dequantising exactly. Raises
    `CheckpointError` naming any missing, unexpected or mis-shaped tensor."""
    path = Path(path)
    cfg = model.cfg
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    shards = checkpoint_shards(path)
    reader = _Reader(shards)
    scale_tensors = {s for name in shards if (s := reader.scale_of(name)) is not None}
    by_shard: dict[Path, list[str]] = defaultdict(list)
    for name, f in shards.items():
        if name not in scale_tensors and not is_ignored(name):
            by_shard[f].append(name)

    expert_count = cfg.n_routed_experts
    filled: dict[str, set] = defaultdict(set)
    for f in tqdm(sorted(by_shard), desc="Loading shards", unit="shard", disable=not progress):
        for name in by_shard[f]:
            dests = targets(name, cfg.moe_intermediate_size)
            if dests is None:
                raise CheckpointError(f"unexpected tensor {name!r} in {f.name}")
            tensor = reader.get(name)
            scale = reader.scale_of(name)
            if scale is not None:
                tensor = _dequantize(name, tensor, reader.get(scale))
            for dest in dests:
                _assign(params, dest, dest.take(tensor), name, expert_count)
                filled[dest.param].add(dest.index)
    reader.close()

    missing = []
    for pname, param in params.items():
        stacked = pname.endswith(("experts.w1", "experts.w2", "experts.w3"))
        have = filled.get(pname, set())
        if stacked and None not in have:
            lacking = sorted(set(range(expert_count)) - have)
            if lacking:
                missing.append(f"{pname} (experts {lacking[:8]}{'...' if len(lacking) > 8 else ''})")
        elif not have:
            missing.append(pname)
    if missing:
        raise CheckpointError(f"checkpoint at {path} lacks tensors: {', '.join(missing[:20])}"
                              + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))


def _assign(params: dict[str, torch.Tensor], dest: Target, tensor: torch.Tensor, source: str,
            expert_count: int) -> None:
    param = params.get(dest.param)
    if param is None:
        raise CheckpointError(f"unexpected tensor {source!r}: the model has no parameter {dest.param!r}")
    if dest.index is not None:
        if not 0 <= dest.index < expert_count:
            raise CheckpointError(f"unexpected tensor {source!r}: expert index {dest.index} >= {expert_count}")
        param = param[dest.index]
    if tuple(tensor.shape) != tuple(param.shape):
        raise CheckpointError(f"tensor {source!r} has shape {tuple(tensor.shape)}, "
                              f"expected {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor.to(param.dtype))


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               progress: bool = True) -> DeepseekV4:
    """Read `config.json` and the weights at `path` into a ready-to-run model."""
    path = Path(path)
    cfg = ModelConfig.from_json(path)
    with torch.device("meta"):
        model = DeepseekV4(cfg, dtype=dtype)
    model = model.to_empty(device=device)
    load_weights(model, path, progress=progress)
    return model.eval()
