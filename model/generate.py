"""A minimal in-process runner: fixed pages per request slot, greedy decoding.

Used by tests and as the reference the engine is compared with; the engine's
scheduler, pools and radix cache (`banyan.scheduler`) replace it for serving.
"""

from __future__ import annotations

import math

import torch

from .batch import ForwardBatch
from .kv_cache import CacheShape, V4KVCache
from .network import DeepseekV4


class SimpleSession:
    """Gives request slot `r` the pages `[r * pages_per_slot, (r + 1) * pages_per_slot)`."""

    def __init__(self, model: DeepseekV4, max_tokens: int = 2048, max_requests: int = 4,
                 page_size: int | None = None) -> None:
        cfg = model.cfg
        self.model = model
        self.page_size = page_size or cfg.min_page_size
        self.pages_per_slot = math.ceil(max_tokens / self.page_size)
        pages = max_requests * self.pages_per_slot
        self.cache = V4KVCache(cfg, CacheShape(self.page_size, pages, pages, max_requests),
                               dtype=model.dtype, device=model.device)
        self.page_table = torch.arange(pages, device=model.device).view(max_requests, self.pages_per_slot)
        self.lengths = [0] * max_requests
        self.max_tokens = max_tokens

    def extend(self, chunks: dict[int, list[int]], all_logits: bool = False) -> list[torch.Tensor]:
        """Feed `chunks[slot]` to each slot in one ragged batch; returns per slot the logits
        of its last token (or of every token with `all_logits`)."""
        slots = list(chunks)
        for s in slots:
            if self.lengths[s] + len(chunks[s]) > self.max_tokens:
                raise ValueError(f"slot {s} would exceed {self.max_tokens} tokens")
        ids = torch.tensor([t for s in slots for t in chunks[s]], dtype=torch.long, device=self.model.device)
        batch = ForwardBatch(
            input_ids=ids,
            prefix_lens=[self.lengths[s] for s in slots],
            extend_lens=[len(chunks[s]) for s in slots],
            req_slots=slots,
            page_table=self.page_table[slots],
            swa_page_table=self.page_table[slots],
            all_logits=all_logits,
        )
        logits = self.model(batch, self.cache)
        for s in slots:
            self.lengths[s] += len(chunks[s])
        if not all_logits:
            return list(logits.unbind(0))
        return list(logits.split([len(chunks[s]) for s in slots]))

    def reset(self, slot: int) -> None:
        self.lengths[slot] = 0

    def prefill(self, slot: int, ids: list[int], chunk_size: int | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """Prefill `ids` into `slot` in chunks; logits of the last token (or all tokens)."""
        chunk_size = chunk_size or len(ids)
        outs = [self.extend({slot: ids[i:i + chunk_size]}, all_logits)[0] for i in range(0, len(ids), chunk_size)]
        return torch.cat(outs) if all_logits else outs[-1]


def greedy_generate(model: DeepseekV4, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids: tuple[int, ...] = ()) -> list[int]:
    """Greedy decoding for tests: prefill the prompt, then one token at a time."""
    session = SimpleSession(model, max_tokens=len(prompt_ids) + max_new_tokens, max_requests=1)
    logits = session.prefill(0, prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(logits.argmax())
        out.append(token)
        if token in stop_ids or len(out) == max_new_tokens:
            break
        logits = session.extend({0: [token]})[0]
    return out
