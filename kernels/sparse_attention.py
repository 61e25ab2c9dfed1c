"""Sparse shared-KV attention with a per-head sink over explicit row lists (torch reference).

Every query attends to the rows its lists name: up to `Ks` rows of the sliding-window pool
and, on CSA/HCA layers, up to `Kx` rows of one extra pool (the indexer's top-k compressed
entries, or every visible HCA entry). A row is one 512-dim vector that serves as key and
value (V4's K=V MQA). The sink is a per-head logit that joins the softmax denominator
without a value. The arguments follow FlashMLA's
`flash_mla_with_kvcache(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
extra_indices_in_kvcache, extra_topk_length)`, so a fused kernel can take exactly them:

    q      [T, H, D]   queries (after per-head norm and RoPE)
    kv     [S, D]      window pool;  index.indices [T, Ks] int64 rows, -1 unused; index.lengths [T]
    extra  [P, D]      extra pool;   extra_index.indices [T, Kx], extra_index.lengths [T]
    sink   [H]         fp32
    out    [T, H, D]   in q's dtype

Row `j` of query `t`'s list is attended iff `j < lengths[t]` and `indices[t, j] >= 0`; a
query with no such row attends to the sink only (output 0).

The reference gathers each query's rows of each list (`[T, K, D]`), scores them with one
batched matmul per list, takes one softmax over both lists and a sink column, and sums
the rows with the probabilities, in fp32 on CPU (the model dtype elsewhere). Queries run
in chunks so that the gathered rows stay within `ROW_BUDGET` bytes. (On CPU the torch backend
runs a few fp32 queries, decode, through `kernels.native.sparse_attention` instead.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .casts import cast

ROW_BUDGET = 4 << 20  # bytes of gathered rows per query chunk (cache-sized: fastest on CPU)


@dataclass
class KVIndex:
    """Per-query row lists into one KV pool (see the module docstring)."""

    indices: torch.Tensor  # [T, K] int64, -1 where unused
    lengths: torch.Tensor  # [T] int64

    @property
    def width(self) -> int:
        return self.indices.shape[1]

    @cached_property
    def rows(self) -> torch.Tensor:
        """`[T, K]` gather-safe rows (unused ones point at row 0)."""
        return self.indices.clamp(min=0)

    @cached_property
    def bias(self) -> torch.Tensor:
        """`[T, 1, K]` fp32 additive score bias: 0 for attended rows, -inf otherwise. Derived
        once per index, so the layers sharing one (every SWA list, every HCA list) share it."""
        k = self.indices.shape[1]
        used = (self.indices >= 0) & (torch.arange(k, device=self.indices.device) < self.lengths.unsqueeze(1))
        return torch.where(used, 0.0, float("-inf")).unsqueeze(1)


def _attend(q: torch.Tensor, rows: list[torch.Tensor], biases: list[torch.Tensor], sink: torch.Tensor,
            scale: float) -> torch.Tensor:
    """q `[n, H, D]`; per list rows `[n, K, D]` and bias `[n, 1, K]`; sink `[H]` -> `[n, H, D]`."""
    n, h, _ = q.shape
    scores = [torch.baddbmm(b, q, r.transpose(1, 2), alpha=scale) for r, b in zip(rows, biases)]  # [n, H, K]
    probs = torch.softmax(torch.cat(scores + [sink.view(1, h, 1).expand(n, h, 1)], dim=-1), dim=-1)
    width = rows[0].shape[1]
    out = torch.bmm(probs[..., :width], rows[0])
    if len(rows) > 1:
        out = torch.baddbmm(out, probs[..., width:-1], rows[1])
    return out


def sparse_attention(q: torch.Tensor, kv: torch.Tensor, index: KVIndex, sink: torch.Tensor, scale: float,
                     extra: torch.Tensor | None = None, extra_index: KVIndex | None = None) -> torch.Tensor:
    """Attention of each query over its listed rows plus the sink; see the module docstring."""
    t, h, d = q.shape
    dtype = torch.float32 if q.device.type == "cpu" else q.dtype
    lists = [(kv, index)] + ([(extra, extra_index)] if extra_index is not None else [])
    step = max(1, ROW_BUDGET // (sum(i.width for _, i in lists) * d * 4))
    qf, sink = cast(q, dtype), cast(sink, dtype)
    biases = [cast(i.bias, dtype) for _, i in lists]
    if step >= t:  # one chunk (decode): no slicing
        rows = [cast(pool.index_select(0, i.rows.view(-1)).view(t, i.width, d), dtype) for pool, i in lists]
        return cast(_attend(qf, rows, biases, sink, scale), q.dtype)
    outs = []
    for a in range(0, t, step):
        b = min(t, a + step)
        rows = [cast(pool.index_select(0, i.rows[a:b].reshape(-1)).view(b - a, i.width, d), dtype)
                for pool, i in lists]  # per list [n, K, D]
        outs.append(_attend(qf[a:b], rows, [bias[a:b] for bias in biases], sink, scale))
    return cast(torch.cat(outs), q.dtype)
