"""The DeepSeek-V4 network over ragged batches: embed -> mHC streams -> blocks ->
hyper head -> norm -> head. Parameter names follow the official checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.dispatch import hc_head_norm
from .batch import BatchPlan, ForwardBatch
from .block import Block
from .config import ModelConfig
from .head import OutputHead
from .kv_cache import LayerCache, V4KVCache
from .mtp import MTPBlock
from .norm import RMSNorm
from .parallel import SINGLE, Parallel
from .parallel_layers import ParallelHead, VocabParallelEmbedding
from .positional import RopeFrequencies, RopeTables


class DeepseekV4(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32, mtp: bool = False,
                 parallel: Parallel = SINGLE) -> None:
        """`mtp`: also hold the multi-token-prediction layer (`mtp.0.*`, the speculative drafter).
        `parallel`: hold only this rank's shard (tensor/expert parallelism); every rank runs
        `forward` on the same batch and gets the same logits."""
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        self.parallel = parallel
        if parallel.config.world_size > 1:
            parallel.config.check_model(cfg)
        tp = parallel.tp > 1
        self.embed = (VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, dtype, parallel) if tp
                      else nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype))
        self.layers = nn.ModuleList(Block(cfg, i, dtype, parallel) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        n = cfg.hc_mult
        self.hc_head_fn = nn.Parameter(torch.zeros(n, n * cfg.hidden_size, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))
        # registered after the hc head: make_tiny draws tensors in state_dict order, so this order
        # keeps the embedded default model (and every seeded test checkpoint) what it was
        self.head = (ParallelHead(cfg.hidden_size, cfg.vocab_size, dtype, parallel) if tp
                     else OutputHead(cfg.hidden_size, cfg.vocab_size, dtype))
        self.mtp = nn.ModuleList([MTPBlock(cfg, dtype, parallel)]) if mtp else None
        self._rope = RopeFrequencies(cfg)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _plan(self, batch: ForwardBatch, page_size: int, ring_extra: int = 0) -> tuple[BatchPlan, RopeTables]:
        plan = BatchPlan(batch, self.cfg, page_size, self.device, ring_extra=ring_extra)
        if self._rope.main.device != self.device:
            self._rope.to(self.device)
        return plan, RopeTables(self._rope, plan)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, cache: V4KVCache, return_streams: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run one ragged batch, updating `cache`; returns fp32 logits of the requested tokens
        (each request's last token, or all tokens with `batch.all_logits`), and with
        `return_streams` also every token's pre-head streams `[N, n, D]` (what MTP drafts from)."""
        cfg = self.cfg
        plan, rope = self._plan(batch, cache.page_size, cache.shape.ring_rows(0))
        ids = plan.input_ids
        streams = self.embed(ids).unsqueeze(1).expand(-1, cfg.hc_mult, -1).contiguous()
        layer_cache: LayerCache
        for block, layer_cache in zip(self.layers, cache.layers):
            streams = block(streams, ids, plan, layer_cache, rope)
        picked = streams if plan.logit_rows is None else streams.index_select(0, plan.logit_rows)
        hidden = hc_head_norm(picked, self.hc_head_fn, self.hc_head_scale, self.hc_head_base, cfg.rms_norm_eps,
                              cfg.hc_eps, self.norm.weight, self.norm.eps)
        logits = self.head(hidden).float()
        return (logits, streams) if return_streams else logits

    @torch.inference_mode()
    def idle_forward(self) -> None:
        """A data-parallel rank with nothing to run this step: join every layer's expert
        dispatch with no tokens of its own (it still runs the tokens other ranks route to its
        experts), so that the collectives stay in lock-step."""
        x = torch.empty(0, self.cfg.hidden_size, dtype=self.dtype, device=self.device)  # [0, D]
        ids = torch.empty(0, dtype=torch.long, device=self.device)
        for block in self.layers:
            block.ffn(x, ids)

    @torch.inference_mode()
    def forward_mtp(self, batch: ForwardBatch, mtp_cache: LayerCache, streams: torch.Tensor,
                    page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One MTP pass: `batch.input_ids` are the tokens that follow each position, `streams`
        `[N, n, D]` the pre-head streams at those positions. Returns (fp32 logits of the
        requested rows, the MTP's output streams `[N, n, D]`)."""
        if self.mtp is None:
            raise RuntimeError("this model was loaded without its MTP layer")
        plan, rope = self._plan(batch, page_size)
        out = self.mtp[0].draft(self.embed, plan.input_ids, streams, plan, mtp_cache, rope)
        picked = out if plan.logit_rows is None else out.index_select(0, plan.logit_rows)
        return self.mtp[0].logits(self.head, picked), out
