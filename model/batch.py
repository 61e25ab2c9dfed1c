"""Ragged batches and the index plans derived from them.

A `ForwardBatch` is what a caller hands the model: the new tokens of several requests
concatenated, and for each request how many tokens its state already holds, its
compressor ring slot and its page tables. `BatchPlan` turns that into the gather and
scatter indices every layer uses, once per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from .config import ModelConfig


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [N] new tokens of all requests, request after request
    prefix_lens: list[int]  # per request: tokens already in its state
    extend_lens: list[int]  # per request: new tokens in this batch
    req_slots: list[int]  # per request: compressor ring slot
    page_table: torch.Tensor  # [B, max_pages] physical page of each logical page (entries, snapshots)
    swa_page_table: torch.Tensor  # [B, max_pages] physical SWA page of each logical page
    all_logits: bool = False  # logits for every token, not only each request's last

    def __post_init__(self) -> None:
        b = len(self.extend_lens)
        if not (len(self.prefix_lens) == len(self.req_slots) == b):
            raise ValueError("prefix_lens, extend_lens and req_slots must have one entry per request")
        if any(n <= 0 for n in self.extend_lens):
            raise ValueError("every request in a batch needs at least one new token")
        if sum(self.extend_lens) != self.input_ids.numel():
            raise ValueError(f"input_ids has {self.input_ids.numel()} tokens, extend_lens sum to "
                             f"{sum(self.extend_lens)}")

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)


@dataclass
class AttentionGroup:
    """Requests whose attention runs as one padded block."""

    token_index: torch.Tensor  # [G, Tq] flat index of each query (0 where padded)
    query_valid: torch.Tensor  # [G, Tq]
    query_pos: torch.Tensor  # [G, Tq]
    window_slots: torch.Tensor  # [G, Kw] SWA pool slots of the window keys
    window_visible: torch.Tensor  # [G, Tq, Kw]
    entry_slots: dict[int, torch.Tensor] = field(default_factory=dict)  # ratio -> [G, E]
    entry_visible: dict[int, torch.Tensor] = field(default_factory=dict)  # ratio -> [G, Tq, E]


@dataclass
class EmissionPlan:
    """Where the rows of the compressor windows closing in this batch come from."""

    entry_slots: torch.Tensor  # [E] pool slot of each new entry
    entry_pos: torch.Tensor  # [E] position of the entry (w * m), for RoPE
    row_source: "RowSource"  # [E, S] rows pooled into each entry
    ring_dest: torch.Tensor  # [R] flat ring rows (slot * S + pos % S) to overwrite
    ring_src: torch.Tensor  # [R] flat token index written there
    snapshot_pages: torch.Tensor  # [P] pages closing in this batch (CSA only)
    snapshot_source: "RowSource | None"  # [P, m] rows of each closing page's last window


@dataclass
class RowSource:
    """Rows addressed by (request, position): from this batch's tokens or from the ring."""

    from_batch: torch.Tensor  # bool
    token_index: torch.Tensor  # flat token index (valid where from_batch)
    ring_row: torch.Tensor  # flat ring row (valid where not from_batch)
    valid: torch.Tensor  # position >= 0


class BatchPlan:
    def __init__(self, batch: ForwardBatch, cfg: ModelConfig, page_size: int) -> None:
        self.batch = batch
        self.cfg = cfg
        self.page_size = page_size
        device = batch.input_ids.device
        self.device = device
        starts, offset = [], 0
        for n in batch.extend_lens:
            starts.append(offset)
            offset += n
        self.seg_starts = starts
        self.num_tokens = offset
        self.token_req = torch.repeat_interleave(
            torch.arange(batch.batch_size, device=device),
            torch.tensor(batch.extend_lens, device=device))
        seg_start_t = torch.tensor(starts, device=device)
        prefix_t = torch.tensor(batch.prefix_lens, device=device)
        local = torch.arange(offset, device=device) - seg_start_t[self.token_req]
        self.positions = prefix_t[self.token_req] + local
        self.swa_slots = self._swa_slot(self.token_req, self.positions)
        self._emissions: dict[tuple[int, bool], EmissionPlan] = {}

    # ---- addressing ---------------------------------------------------------------------
    def _swa_slot(self, req: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        p = self.page_size
        return self.batch.swa_page_table[req, pos // p] * p + pos % p

    def _entry_slot(self, req: torch.Tensor, w: torch.Tensor, ratio: int) -> torch.Tensor:
        p = self.page_size
        tok = w * ratio
        return self.batch.page_table[req, tok // p] * (p // ratio) + (tok % p) // ratio

    def _rows(self, req: torch.Tensor, pos: torch.Tensor, ring_size: int) -> RowSource:
        prefix = torch.tensor(self.batch.prefix_lens, device=self.device)[req]
        starts = torch.tensor(self.seg_starts, device=self.device)[req]
        slots = torch.tensor(self.batch.req_slots, device=self.device)[req]
        from_batch = pos >= prefix
        token_index = torch.where(from_batch, starts + pos - prefix, torch.zeros_like(pos))
        ring_row = slots * ring_size + pos.clamp(min=0) % ring_size
        return RowSource(from_batch, token_index, ring_row, pos >= 0)

    # ---- logits -------------------------------------------------------------------------
    @cached_property
    def logit_index(self) -> torch.Tensor:
        if self.batch.all_logits:
            return torch.arange(self.num_tokens, device=self.device)
        ends = [s + n - 1 for s, n in zip(self.seg_starts, self.batch.extend_lens)]
        return torch.tensor(ends, device=self.device)

    # ---- attention groups -----------------------------------------------------------------
    @cached_property
    def groups(self) -> list[AttentionGroup]:
        """Single-token (decode) requests share one group; each longer chunk gets its own."""
        lens = self.batch.extend_lens
        singles = [i for i, n in enumerate(lens) if n == 1]
        chunks = [[i] for i, n in enumerate(lens) if n > 1]
        return [self._group(g) for g in ([singles] if singles else []) + chunks]

    def _group(self, reqs: list[int]) -> AttentionGroup:
        b, dev, window = self.batch, self.device, self.cfg.sliding_window
        tq = max(b.extend_lens[i] for i in reqs)
        ends = [b.prefix_lens[i] + b.extend_lens[i] for i in reqs]
        win_starts = [max(0, b.prefix_lens[i] - window + 1) for i in reqs]
        kw = max(e - s for e, s in zip(ends, win_starts))
        req_t = torch.tensor(reqs, device=dev)
        ar_q = torch.arange(tq, device=dev)
        ext = torch.tensor([b.extend_lens[i] for i in reqs], device=dev)
        query_valid = ar_q.unsqueeze(0) < ext.unsqueeze(1)
        token_index = torch.tensor([self.seg_starts[i] for i in reqs], device=dev).unsqueeze(1) + ar_q
        token_index = torch.where(query_valid, token_index, torch.zeros_like(token_index))
        query_pos = torch.tensor([b.prefix_lens[i] for i in reqs], device=dev).unsqueeze(1) + ar_q
        ends_t = torch.tensor(ends, device=dev)
        key_pos = torch.tensor(win_starts, device=dev).unsqueeze(1) + torch.arange(kw, device=dev)
        key_valid = key_pos < ends_t.unsqueeze(1)
        window_slots = self._swa_slot(req_t.unsqueeze(1).expand_as(key_pos), torch.where(key_valid, key_pos, 0))
        qp, kp = query_pos.unsqueeze(2), key_pos.unsqueeze(1)
        window_visible = (kp <= qp) & (kp > qp - window) & key_valid.unsqueeze(1) & query_valid.unsqueeze(2)
        group = AttentionGroup(token_index, query_valid, query_pos, window_slots, window_visible)
        for ratio in {r for r in self.cfg.compress_ratios if r > 0}:
            counts = ends_t // ratio
            n_entries = max(int(counts.max()), 1)
            w = torch.arange(n_entries, device=dev).unsqueeze(0).expand(len(reqs), -1)
            exists = w < counts.unsqueeze(1)
            group.entry_slots[ratio] = self._entry_slot(req_t.unsqueeze(1).expand_as(w), torch.where(exists, w, 0),
                                                        ratio)
            # entry w (tokens up to w*m + m - 1) is visible to query t once t >= w*m + m - 1
            group.entry_visible[ratio] = ((w.unsqueeze(1) < ((query_pos + 1) // ratio).unsqueeze(2))
                                          & exists.unsqueeze(1) & query_valid.unsqueeze(2))
        return group

    # ---- compressor emissions ------------------------------------------------------------
    def emission(self, ratio: int, overlap: bool) -> EmissionPlan:
        key = (ratio, overlap)
        if key not in self._emissions:
            self._emissions[key] = self._emission(ratio, overlap)
        return self._emissions[key]

    def _emission(self, m: int, overlap: bool) -> EmissionPlan:
        b, dev, p = self.batch, self.device, self.page_size
        ring_size = 2 * m if overlap else m
        ent_req, ent_w, ring_req, ring_pos, snap_req, snap_page = [], [], [], [], [], []
        for i, (prefix, n) in enumerate(zip(b.prefix_lens, b.extend_lens)):
            end = prefix + n
            ws = range(prefix // m, end // m)  # windows whose last token is in this batch
            ent_req += [i] * len(ws)
            ent_w += list(ws)
            keep_from = max(prefix, end - ring_size)
            ring_req += [i] * (end - keep_from)
            ring_pos += list(range(keep_from, end))
            if overlap:
                pages = range(prefix // p + 1, end // p + 1)  # boundaries k*p in (prefix, end]
                snap_req += [i] * len(pages)
                snap_page += list(pages)
        ent_req_t = torch.tensor(ent_req, dtype=torch.long, device=dev)
        ent_w_t = torch.tensor(ent_w, dtype=torch.long, device=dev)
        first = ent_w_t * m - (ring_size - m)
        slot_pos = first.unsqueeze(1) + torch.arange(ring_size, device=dev)
        ring_req_t = torch.tensor(ring_req, dtype=torch.long, device=dev)
        ring_pos_t = torch.tensor(ring_pos, dtype=torch.long, device=dev)
        ring_rows = self._rows(ring_req_t, ring_pos_t, ring_size)
        snapshot_pages = torch.empty(0, dtype=torch.long, device=dev)
        snapshot_source = None
        if overlap:
            snap_req_t = torch.tensor(snap_req, dtype=torch.long, device=dev)
            snap_k = torch.tensor(snap_page, dtype=torch.long, device=dev)
            snapshot_pages = b.page_table[snap_req_t, snap_k - 1]
            last_window = (snap_k * p - m).unsqueeze(1) + torch.arange(m, device=dev)
            snapshot_source = self._rows(snap_req_t.unsqueeze(1).expand_as(last_window), last_window, ring_size)
        return EmissionPlan(
            entry_slots=self._entry_slot(ent_req_t, ent_w_t, m),
            entry_pos=ent_w_t * m,
            row_source=self._rows(ent_req_t.unsqueeze(1).expand_as(slot_pos), slot_pos, ring_size),
            ring_dest=ring_rows.ring_row,
            ring_src=ring_rows.token_index,
            snapshot_pages=snapshot_pages,
            snapshot_source=snapshot_source,
        )
