"""The output head: `head.weight [V, D]`, hidden states to vocabulary logits.

A checkpoint stores the head in bf16; a float32 model holds it as float32. At a few rows
(decode) the product is bound by reading that weight (the tiny model's is 33 MB, 3x the
rest of a step's weights), so on CPU the head also keeps a bf16 panel copy and runs those
rows through the native bf16-weight GEMV: the same values, half the bytes. Larger row
counts, other devices, weights that are not bf16 values, or no C compiler: `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import native

GEMV_MAX_ROWS = 8  # rows up to which the bf16 GEMV beats MKL's fp32 GEMM (2 cores, tiny model)


class OutputHead(nn.Linear):
    def __init__(self, dim: int, vocab_size: int, dtype: torch.dtype) -> None:
        super().__init__(dim, vocab_size, bias=False, dtype=dtype)
        self._panels: tuple[tuple[int, int], torch.Tensor | None] | None = None  # ((ptr, version), panels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [T, D] -> [T, V]`."""
        if x.dim() == 2 and x.shape[0] <= GEMV_MAX_ROWS and x.device.type == "cpu" and x.dtype == torch.float32:
            panels = self._bf16_panels()
            if panels is not None:
                out = native.bf16_gemv(x, panels, self.out_features)
                if out is not None:
                    return out
        return F.linear(x, self.weight)

    def _bf16_panels(self) -> torch.Tensor | None:
        """The packed copy of the current weight, rebuilt when the weight is replaced or written."""
        key = (self.weight.data_ptr(), self.weight._version)
        if self._panels is None or self._panels[0] != key:
            usable = self.weight.dtype == torch.float32 and native.library() is not None
            self._panels = (key, native.pack_bf16_panels(self.weight) if usable else None)
        return self._panels[1]
