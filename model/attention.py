"""The V4 attention block: shared-KV MQA over a sliding window plus, for CSA/HCA
layers, compressed entries (CSA: only those the lightning indexer selects)."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.attention import sink_attention
from ..kernels.indexer import indexer_scores
from ..kernels.norm import rms_norm
from ..kernels.rope import apply_rope
from .batch import AttentionGroup, BatchPlan
from .compressor import Compressor
from .config import CSA, SWA, ModelConfig
from .kv_cache import CompressorStore, LayerCache
from .norm import RMSNorm
from .positional import BatchRope


class Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.ratio = cfg.csa_ratio
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False, dtype=dtype)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False, dtype=dtype)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, self.ratio, True, cfg.rms_norm_eps, dtype)

    def prepare(self, x: torch.Tensor, qr: torch.Tensor, plan: BatchPlan, store: CompressorStore,
                rope: BatchRope) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this batch's indexer keys; return the queries and per-head weights."""
        self.compressor(x, plan, store, rope.compress_inv_freq)
        cos, sin = rope.for_kind(CSA)
        q = apply_rope(self.wq_b(qr).view(x.shape[0], self.n_heads, self.head_dim), cos, sin)
        weights = self.weights_proj(x).float() * self.n_heads ** -0.5
        return q, weights

    def select(self, q: torch.Tensor, weights: torch.Tensor, group: AttentionGroup,
               store: CompressorStore) -> torch.Tensor:
        """Top-k mask `[G, Tq, E]` over the group's visible compressed entries."""
        visible = group.entry_visible[self.ratio]
        keys = store.entries[group.entry_slots[self.ratio]]
        scores = indexer_scores(q[group.token_index], keys, weights[group.token_index], self.head_dim ** -0.5)
        scores = scores.masked_fill(~visible, float("-inf"))
        k = min(self.topk, scores.shape[-1])
        chosen = torch.zeros_like(visible).scatter_(-1, scores.topk(k, dim=-1).indices, True)
        return chosen & visible


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.kind, self.ratio = cfg.layer_kind(layer), cfg.compress_ratios[layer]
        self.n_heads, self.head_dim, self.groups, self.eps = h, hd, cfg.o_groups, cfg.rms_norm_eps
        self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=False, dtype=dtype)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
        self.wq_b = nn.Linear(cfg.q_lora_rank, h * hd, bias=False, dtype=dtype)
        self.wkv = nn.Linear(d, hd, bias=False, dtype=dtype)
        self.kv_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.wo_a = nn.Linear(h * hd // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank, bias=False, dtype=dtype)
        self.wo_b = nn.Linear(cfg.o_groups * cfg.o_lora_rank, d, bias=False, dtype=dtype)
        self.attn_sink = nn.Parameter(torch.zeros(h, dtype=torch.float32))
        self.compressor = (Compressor(d, hd, self.ratio, self.kind == CSA, cfg.rms_norm_eps, dtype)
                           if self.kind != SWA else None)
        self.indexer = Indexer(cfg, dtype) if self.kind == CSA else None

    def forward(self, x: torch.Tensor, plan: BatchPlan, cache: LayerCache, rope: BatchRope) -> torch.Tensor:
        n = x.shape[0]
        cos, sin = rope.for_kind(self.kind)
        qr = self.q_norm(self.wq_a(x))
        q = rms_norm(self.wq_b(qr).view(n, self.n_heads, self.head_dim), None, self.eps)
        q = apply_rope(q, cos, sin)
        kv = apply_rope(self.kv_norm(self.wkv(x)), cos, sin)
        cache.swa[plan.swa_slots] = kv.to(cache.swa.dtype)
        if self.compressor is not None:
            self.compressor(x, plan, cache.compressor, rope.compress_inv_freq)
        if self.indexer is not None:
            index_q, index_w = self.indexer.prepare(x, qr, plan, cache.indexer, rope)

        out = q.new_empty(n, self.n_heads, self.head_dim)
        for group in plan.groups:
            keys, visible = cache.swa[group.window_slots], group.window_visible
            if self.compressor is not None:
                entry_visible = group.entry_visible[self.ratio]
                if self.indexer is not None:
                    entry_visible = self.indexer.select(index_q, index_w, group, cache.indexer)
                keys = torch.cat([keys, cache.compressor.entries[group.entry_slots[self.ratio]]], dim=1)
                visible = torch.cat([visible, entry_visible], dim=-1)
            attended = sink_attention(q[group.token_index].transpose(1, 2), keys.to(q.dtype), visible,
                                      self.attn_sink, self.head_dim ** -0.5)
            out[group.token_index[group.query_valid]] = attended[group.query_valid]

        out = apply_rope(out, cos, sin, inverse=True)
        grouped = out.view(n, self.groups, -1)
        wo_a = self.wo_a.weight.view(self.groups, -1, grouped.shape[-1])
        z = torch.einsum("ngd,grd->ngr", grouped, wo_a)
        return self.wo_b(z.flatten(1))
