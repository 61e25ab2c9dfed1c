"""One V4 layer: mHC-wrapped attention then mixture of experts, over the residual streams."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.dispatch import hc_post, hc_pre_norm
from .attention import Attention
from .batch import BatchPlan
from .config import ModelConfig
from .kv_cache import LayerCache
from .moe import MoE
from .norm import RMSNorm
from .parallel import SINGLE, Parallel
from .positional import RopeTables


def _hc_params(module: nn.Module, prefix: str, cfg: ModelConfig) -> None:
    n = cfg.hc_mult
    mix = (2 + n) * n
    setattr(module, f"{prefix}_fn", nn.Parameter(torch.zeros(mix, n * cfg.hidden_size, dtype=torch.float32)))
    setattr(module, f"{prefix}_base", nn.Parameter(torch.zeros(mix, dtype=torch.float32)))
    setattr(module, f"{prefix}_scale", nn.Parameter(torch.ones(3, dtype=torch.float32)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, parallel: Parallel = SINGLE) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer, dtype, parallel)
        self.ffn = MoE(cfg, layer, dtype, parallel)
        _hc_params(self, "hc_attn", cfg)
        _hc_params(self, "hc_ffn", cfg)

    def _mix(self, streams: torch.Tensor, prefix: str, norm: RMSNorm
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The streams collapsed into the sub-block's normed input, with its post and comb mixes."""
        c = self.cfg
        return hc_pre_norm(streams, getattr(self, f"{prefix}_fn"), getattr(self, f"{prefix}_scale"),
                           getattr(self, f"{prefix}_base"), c.rms_norm_eps, c.hc_eps, c.hc_sinkhorn_iters,
                           norm.weight, norm.eps)

    def forward(self, streams: torch.Tensor, input_ids: torch.Tensor, plan: BatchPlan, cache: LayerCache,
                rope: RopeTables) -> torch.Tensor:
        x, post, comb = self._mix(streams, "hc_attn", self.attn_norm)
        streams = hc_post(self.attn(x, plan, cache, rope), streams, post, comb)
        x, post, comb = self._mix(streams, "hc_ffn", self.ffn_norm)
        return hc_post(self.ffn(x, input_ids), streams, post, comb)
