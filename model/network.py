"""The DeepSeek-V4 network over ragged batches: embed -> mHC streams -> blocks ->
hyper head -> norm -> head. Parameter names follow the official checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.mhc import hc_head, hc_post, hc_pre
from .attention import Attention
from .batch import BatchPlan, ForwardBatch
from .config import ModelConfig
from .kv_cache import LayerCache, V4KVCache
from .moe import MoE
from .norm import RMSNorm
from .positional import RopeFrequencies, RopeTables


def _hc_params(module: nn.Module, prefix: str, cfg: ModelConfig) -> None:
    n = cfg.hc_mult
    mix = (2 + n) * n
    setattr(module, f"{prefix}_fn", nn.Parameter(torch.zeros(mix, n * cfg.hidden_size, dtype=torch.float32)))
    setattr(module, f"{prefix}_base", nn.Parameter(torch.zeros(mix, dtype=torch.float32)))
    setattr(module, f"{prefix}_scale", nn.Parameter(torch.ones(3, dtype=torch.float32)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer, dtype)
        self.ffn = MoE(cfg, layer, dtype)
        _hc_params(self, "hc_attn", cfg)
        _hc_params(self, "hc_ffn", cfg)

    def _mix(self, streams: torch.Tensor, prefix: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cfg
        return hc_pre(streams, getattr(self, f"{prefix}_fn"), getattr(self, f"{prefix}_scale"),
                      getattr(self, f"{prefix}_base"), c.rms_norm_eps, c.hc_eps, c.hc_sinkhorn_iters)

    def forward(self, streams: torch.Tensor, input_ids: torch.Tensor, plan: BatchPlan, cache: LayerCache,
                rope: RopeTables) -> torch.Tensor:
        x, post, comb = self._mix(streams, "hc_attn")
        streams = hc_post(self.attn(self.attn_norm(x), plan, cache, rope), streams, post, comb)
        x, post, comb = self._mix(streams, "hc_ffn")
        return hc_post(self.ffn(self.ffn_norm(x), input_ids), streams, post, comb)


class DeepseekV4(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(Block(cfg, i, dtype) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        n = cfg.hc_mult
        self.hc_head_fn = nn.Parameter(torch.zeros(n, n * cfg.hidden_size, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        self._rope = RopeFrequencies(cfg)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, cache: V4KVCache) -> torch.Tensor:
        """Run one ragged batch, updating `cache`; returns fp32 logits of the requested tokens
        (each request's last token, or all tokens with `batch.all_logits`)."""
        cfg = self.cfg
        plan = BatchPlan(batch, cfg, cache.page_size, self.device,
                         ring_extra=cache.shape.ring_rows(0))
        if self._rope.main.device != self.device:
            self._rope.to(self.device)
        rope = RopeTables(self._rope, plan)
        ids = plan.input_ids
        streams = self.embed(ids).unsqueeze(1).expand(-1, cfg.hc_mult, -1).contiguous()
        layer_cache: LayerCache
        for block, layer_cache in zip(self.layers, cache.layers):
            streams = block(streams, ids, plan, layer_cache, rope)
        if plan.logit_rows is not None:
            streams = streams.index_select(0, plan.logit_rows)
        hidden = hc_head(streams, self.hc_head_fn, self.hc_head_scale, self.hc_head_base,
                         cfg.rms_norm_eps, cfg.hc_eps)
        return self.head(self.norm(hidden)).float()
