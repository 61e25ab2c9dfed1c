"""`Linear`: a linear layer whose weight is dense or kept as the checkpoint stores it.

Dense: a parameter `weight [out, in]` (like `nn.Linear` without bias). FP8 or FP4: the
stored `weight` and `scale` buffers (see `kernels.quant.QuantizedWeight`), under the
checkpoint's own names (`wq_a.weight`, `wq_a.scale`), so the loader fills either form by
name. `stack=E` holds E matrices `[E, out, in]` (routed experts).

`to_native` turns the dense linears of a built (meta) model into stored-format ones,
for `load_model(..., weight_format="native")`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..kernels import dispatch
from ..kernels.linear import expert_linear
from ..kernels.quant import FP4_BLOCK, FP8_BLOCK, QuantizedWeight

QUANTIZED = ("fp8", "fp4")


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.float32,
                 quant: str | None = None, stack: int | None = None,
                 scale_dtype: torch.dtype = torch.float8_e8m0fnu) -> None:
        super().__init__()
        self.in_features, self.out_features, self.quant, self.stack = in_features, out_features, quant, stack
        lead = (stack,) if stack is not None else ()
        if quant is None:
            self.weight = nn.Parameter(torch.zeros(*lead, out_features, in_features, dtype=dtype))
            self.scale = None
            return
        if quant == "fp8":
            data = torch.zeros(*lead, out_features, in_features, dtype=torch.float8_e4m3fn)
            scale = torch.zeros(*lead, -(-out_features // FP8_BLOCK), -(-in_features // FP8_BLOCK), dtype=scale_dtype)
        elif quant == "fp4":
            if in_features % FP4_BLOCK:
                raise ValueError(f"fp4 needs in_features to be a multiple of {FP4_BLOCK}, got {in_features}")
            data = torch.zeros(*lead, out_features, in_features // 2, dtype=torch.int8)
            scale = torch.zeros(*lead, out_features, in_features // FP4_BLOCK, dtype=scale_dtype)
        else:
            raise ValueError(f"quant must be None, 'fp8' or 'fp4', got {quant!r}")
        self.register_buffer("weight", data)
        self.register_buffer("scale", scale)

    def quantized(self) -> QuantizedWeight:
        """The weight as an op argument (no copy)."""
        return QuantizedWeight(self.weight, self.scale, self.quant or "dense")

    def argument(self) -> QuantizedWeight | torch.Tensor:
        """The weight as the dispatch ops take it: a dense weight as the plain tensor (no per-call
        `QuantizedWeight`: hot at batch 1), a stored one as `quantized()`."""
        return self.weight if self.quant is None else self.quantized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [..., in] -> [..., out]` (`dispatch.linear`)."""
        return dispatch.linear(x, self.argument())

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """`x [T, G, in] -> [T, G, out / G]`, group g using rows `g*out/G : (g+1)*out/G`."""
        return dispatch.grouped_linear(x, self.argument())

    def experts(self, x: torch.Tensor, counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Stacked form: `x [T, in]` grouped by expert (`counts[e]` rows each) -> `[T, out]`."""
        return expert_linear(x, self.quantized(), counts)

    def extra_repr(self) -> str:
        stack = f", stack={self.stack}" if self.stack is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, quant={self.quant}{stack}"


def to_native(model: nn.Module, formats: Mapping[str, tuple[str, torch.dtype]]) -> None:
    """Replace each module or stacked parameter named in `formats` (path -> (fmt, scale dtype))
    by a stored-format `Linear` of the same shape. Call it on a meta model before `to_empty`."""
    for path, (fmt, scale_dtype) in formats.items():
        if fmt not in QUANTIZED:
            raise ValueError(f"{path}: weight format must be one of {QUANTIZED}, got {fmt!r}")
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path)
        except AttributeError:
            raise ValueError(f"{path}: the model has no module {parent_path!r}") from None
        current = getattr(parent, attr, None)
        if isinstance(current, Linear) and current.quant == fmt:
            continue
        if isinstance(current, nn.Linear) or (isinstance(current, Linear) and current.quant is None):
            weight, stack = current.weight, getattr(current, "stack", None)
        elif isinstance(current, nn.Parameter) and current.dim() == 3:
            weight, stack = current, current.shape[0]
            delattr(parent, attr)
        else:
            raise ValueError(f"{path} is not a dense linear layer or stacked weight: {type(current).__name__}")
        out_features, in_features = weight.shape[-2:]
        with torch.device(weight.device):
            setattr(parent, attr, Linear(in_features, out_features, weight.dtype, fmt, stack, scale_dtype))
