"""V4's multi-token-prediction (MTP) layer, the drafter for speculative decoding.

The layer is one more block (index `num_layers`: sliding-window attention only, theta 10000,
non-hash MoE, its own KV window) fed the target's pre-head streams `X_p` at position `p` and
the embedding of the token at `p + 1` (dsv4-spec §5.8):

    X0 = e_proj(enorm(embed(x_{p+1}))) + h_proj(hnorm(X_p))      # per stream
    X1 = Block(X0)
    logits = head(norm(hc_head(X1)))                              # shared embed and head

`X1` is fed back as the next position's `X_p` to draft more than one token.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.dispatch import hc_head_norm
from .batch import BatchPlan
from .block import Block
from .config import ModelConfig
from .kv_cache import LayerCache
from .linear import Linear
from .norm import RMSNorm
from .parallel import SINGLE, Parallel
from .positional import RopeTables


class MTPBlock(Block):
    """The MTP layer; its parameter names are the official `mtp.0.*` ones."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, parallel: Parallel = SINGLE) -> None:
        super().__init__(cfg, cfg.num_layers, dtype, parallel)
        d, n = cfg.hidden_size, cfg.hc_mult
        self.e_proj = Linear(d, d, dtype)
        self.h_proj = Linear(d, d, dtype)
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.norm = RMSNorm(d, cfg.rms_norm_eps)
        self.hc_head_fn = nn.Parameter(torch.zeros(n, n * d, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))

    def draft(self, embed: nn.Embedding, next_ids: torch.Tensor, streams: torch.Tensor, plan: BatchPlan,
              cache: LayerCache, rope: RopeTables) -> torch.Tensor:
        """next_ids: `[T]` the token after each position; streams: `[T, n, D]` the target's (or
        the previous MTP step's) pre-head streams. Returns the output streams `[T, n, D]`."""
        e = self.e_proj(self.enorm(embed(next_ids)))  # [T, D]
        x = e.unsqueeze(1) + self.h_proj(self.hnorm(streams.to(e.dtype)))  # [T, n, D]
        return self(x, next_ids, plan, cache, rope)

    def logits(self, head: nn.Module, streams: torch.Tensor) -> torch.Tensor:
        """fp32 logits `[T, V]` from output streams `[T, n, D]`."""
        cfg = self.cfg
        hidden = hc_head_norm(streams, self.hc_head_fn, self.hc_head_scale, self.hc_head_base, cfg.rms_norm_eps,
                              cfg.hc_eps, self.norm.weight, self.norm.eps)
        return head(hidden).float()
