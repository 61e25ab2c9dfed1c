"""The V4 attention block: shared-KV MQA over each query's sliding window plus, for CSA
layers, the compressed entries the lightning indexer selects, and for HCA layers every
visible compressed entry. Each query's rows are explicit lists (`kernels.sparse_attention`).

The hot ops (q norm + RoPE, the kv insert, sparse attention, the indexer's top-k) go through
`kernels.dispatch`, which picks the torch reference or the Triton kernel per call."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import dispatch
from ..kernels.sparse_attention import KVIndex
from .batch import BatchPlan
from .compressor import Compressor
from .config import CSA, SWA, ModelConfig
from .kv_cache import CompressorStore, LayerCache
from .linear import Linear
from .norm import RMSNorm
from .parallel import SINGLE, Parallel
from .positional import RopeTables


class Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.ratio = cfg.csa_ratio
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, dtype)
        self.weights_proj = Linear(cfg.hidden_size, self.n_heads, dtype)
        self.compressor = Compressor(cfg.hidden_size, self.head_dim, self.ratio, True, cfg.rms_norm_eps, dtype)

    def forward(self, x: torch.Tensor, qr: torch.Tensor, plan: BatchPlan, store: CompressorStore,
                rope: RopeTables) -> KVIndex:
        """Write this batch's indexer keys; return each query's top-k entries as rows of the
        compressed pool (`[N, K]`, -1 padded)."""
        self.compressor(x, plan, store, rope)
        rows = dispatch.indexer_select(x, qr, self.wq_b.argument(), self.weights_proj.argument(), self.n_heads,
                                       rope.for_kind(CSA)[0], store.entries, plan.indexer_groups, self.topk)
        return KVIndex(rows, plan.csa_lens)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, parallel: Parallel = SINGLE) -> None:
        """Under tensor parallelism a rank holds `1/tp` of the query heads (`wq_b` rows, sinks)
        and of the output groups (`wo_a` rows, `wo_b` columns), and `wo_b`'s partial sums are
        all-reduced; the KV projection, compressors and indexer are replicated."""
        super().__init__()
        d, h, hd = cfg.hidden_size, cfg.num_heads // parallel.tp, cfg.head_dim
        self.kind, self.ratio = cfg.layer_kind(layer), cfg.ratio_of(layer)
        self.n_heads, self.head_dim, self.groups, self.eps = h, hd, cfg.o_groups // parallel.tp, cfg.rms_norm_eps
        self.comm = parallel.tp_comm
        self.wq_a = Linear(d, cfg.q_lora_rank, dtype)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
        self.wq_b = Linear(cfg.q_lora_rank, h * hd, dtype)
        self.wkv = Linear(d, hd, dtype)
        self.kv_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.wo_a = Linear(cfg.num_heads * hd // cfg.o_groups, self.groups * cfg.o_lora_rank, dtype)
        self.wo_b = Linear(self.groups * cfg.o_lora_rank, d, dtype)
        self.attn_sink = nn.Parameter(torch.zeros(h, dtype=torch.float32))
        self.compressor = (Compressor(d, hd, self.ratio, self.kind == CSA, cfg.rms_norm_eps, dtype)
                           if self.kind != SWA else None)
        self.indexer = Indexer(cfg, dtype) if self.kind == CSA else None

    def forward(self, x: torch.Tensor, plan: BatchPlan, cache: LayerCache, rope: RopeTables) -> torch.Tensor:
        table, inverse = rope.for_kind(self.kind)
        q, qr = dispatch.attention_prologue(x, self.wq_a.argument(), self.q_norm.weight, self.wq_b.argument(),
                                            self.wkv.argument(), self.kv_norm.weight, self.eps, self.n_heads, table,
                                            cache.swa, plan.swa_slots, cache.qdq)
        extra, extra_index = None, None
        if self.compressor is not None:
            self.compressor(x, plan, cache.compressor, rope)
            extra = cache.compressor.entries
            extra_index = self.indexer(x, qr, plan, cache.indexer, rope) if self.indexer is not None else plan.hca

        out = dispatch.attention_output(q, cache.swa, plan.window, self.attn_sink, self.head_dim ** -0.5, extra,
                                        extra_index, inverse, self.wo_a.argument(), self.groups, self.wo_b.argument())
        return self.comm.all_reduce(out)  # [N, D]
