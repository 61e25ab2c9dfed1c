"""RMS normalisation (computed in fp32, cast back to the input dtype)."""

import torch
import torch.nn.functional as F

from . import native


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`weight * x / sqrt(mean(x^2) + eps)` over the last dim; `weight` (fp32) may be None."""
    if x.dtype == torch.float32:
        few = native.rms_norm(x, weight, eps)  # a few CPU rows: one C call
        if few is not None:
            return few
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), weight, eps).to(x.dtype)
