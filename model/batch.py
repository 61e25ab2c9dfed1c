"""Ragged batches and the per-step metadata derived from them.

A `ForwardBatch` is what a caller hands the model: the new tokens of several requests
concatenated, and for each request how many tokens its state already holds, its
compressor ring slot and its page tables. `BatchPlan` turns that into every index the
layers use (positions, KV write slots, the per-query row lists of sparse attention, the
indexer's candidate lists, the compressor emission plans, the logit rows). It is built on
the host from the batch's lists and page tables with numpy, once per forward, and reaches
the model's device in one copy of one int64 buffer; nothing in the layers reads a device
value back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..kernels.indexer import QueryGroup
from ..kernels.sparse_attention import KVIndex
from .config import CSA, HCA, ModelConfig


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [N] new tokens of all requests, request after request (CPU or device)
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
        if any(n < 0 for n in self.prefix_lens):
            raise ValueError("prefix_lens must not be negative")
        if sum(self.extend_lens) != self.input_ids.numel():
            raise ValueError(f"input_ids has {self.input_ids.numel()} tokens, extend_lens sum to "
                             f"{sum(self.extend_lens)}")
        for name in ("page_table", "swa_page_table"):
            table = getattr(self, name)
            if table.dim() != 2 or table.shape[0] != b:
                raise ValueError(f"{name} must be [batch_size={b}, max_pages], got {tuple(table.shape)}")

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens)


@dataclass
class EmissionPlan:
    """What the compressors of one kind write in this batch: ring rows always, and where the
    rows of the windows (entries) and pages (CSA snapshots) closing in it come from."""

    ring_dest: torch.Tensor  # [R] flat ring rows to overwrite
    ring_src: torch.Tensor  # [R] flat token index written there
    num_entries: int = 0
    entry_slots: torch.Tensor | None = None  # [E] pool slot of each new entry
    entry_pos: torch.Tensor | None = None  # [E] position of the entry (w * m), for RoPE
    row_source: torch.Tensor | None = None  # [4, E, window] rows pooled into each entry (see `kernels.composed.gather_rows`)
    num_snapshots: int = 0
    snapshot_pages: torch.Tensor | None = None  # [P] sliding-window page of each page closing here (CSA only)
    snapshot_homes: tuple[np.ndarray, np.ndarray] | None = None  # host: (compressed page, its SWA page)
    snapshot_source: torch.Tensor | None = None  # [4, P, m] rows of each closing page's last window


class _HostBuffer:
    """Int64 arrays packed into one host buffer and moved to a device in one copy."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        self._arrays.append(np.asarray(array, dtype=np.int64))
        return len(self._arrays) - 1

    def to(self, device: torch.device) -> list[torch.Tensor]:
        """The arrays, in order, as views of one device tensor."""
        sizes = [a.size for a in self._arrays]
        if device.type == "cuda":
            host = torch.empty(sum(sizes), dtype=torch.long, pin_memory=True)
            np.concatenate([a.ravel() for a in self._arrays], out=host.numpy())
            flat = host.to(device, non_blocking=True)
        else:
            flat = torch.from_numpy(np.concatenate([a.ravel() for a in self._arrays])).to(device)
        return [part if a.ndim == 1 else part.view(a.shape) for part, a in zip(flat.split(sizes), self._arrays)]


def _host(t: torch.Tensor) -> np.ndarray:
    """A CPU int64 view of a host or device tensor (device tables cost one read before the layers)."""
    return t.detach().to("cpu", torch.long).numpy()


def _ragged(counts: np.ndarray, firsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each request i, `counts[i]` consecutive values from `firsts[i]`: (request, value)."""
    if len(counts) == 1:  # one request (batch-1 decode): two calls, not seven
        count, first = int(counts[0]), int(firsts[0])
        return np.zeros(count, dtype=np.int64), np.arange(first, first + count)
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, firsts[owner] + np.arange(int(counts.sum())) - starts[owner]


class BatchPlan:
    """Per-step metadata of one `ForwardBatch` on one device (see the module docstring)."""

    def __init__(self, batch: ForwardBatch, cfg: ModelConfig, page_size: int, device: torch.device,
                 ring_extra: int = 0) -> None:
        """`ring_extra`: compressor ring rows beyond the pooling window (see `CacheShape.ring_rows`)."""
        self.cfg, self.page_size, self.ring_extra = cfg, page_size, ring_extra
        self._pt, self._swa_pt = _host(batch.page_table), _host(batch.swa_page_table)
        self._ext = np.asarray(batch.extend_lens, dtype=np.int64)
        self._prefix = np.asarray(batch.prefix_lens, dtype=np.int64)
        self._slots = np.asarray(batch.req_slots, dtype=np.int64)
        self._starts = np.cumsum(self._ext) - self._ext
        self._end = self._prefix + self._ext
        self.num_tokens = int(self._ext.sum())
        self._req, self._pos = _ragged(self._ext, self._prefix)
        kinds, ratios = cfg.layer_kinds, cfg.ratios
        csa, hca = cfg.csa_ratio, cfg.hca_ratio
        pos = self._pos

        # per-token rows, stacked into one array
        per_token = {"positions": pos, "swa_slots": self._swa_slot(self._req, pos),
                     "window_lens": np.minimum(cfg.sliding_window, pos + 1)}
        per_token.update({f"ape{m}": pos % m for m in ratios})  # compressor position bias row
        if HCA in kinds:
            per_token["hca_lens"] = (pos + 1) // hca  # every entry it sees
        if CSA in kinds:
            per_token["csa_lens"] = np.minimum(cfg.index_topk, (pos + 1) // csa)  # the top-k it picks
        host = _HostBuffer()
        h_token = host.add(np.stack(list(per_token.values())))
        h_window = host.add(self._window_lists(per_token["window_lens"]))
        h_hca = host.add(self._entry_lists(self._req, per_token["hca_lens"], hca)) if HCA in kinds else None
        groups = self._indexer_groups(host, (pos + 1) // csa, csa) if CSA in kinds else []
        emissions = {(m, m == csa): self._add_emission(host, m, m == csa) for m in ratios}  # CSA windows overlap
        h_logits = None if batch.all_logits else host.add(self._starts + self._ext - 1)
        h_ids = None if batch.input_ids.device == device else host.add(_host(batch.input_ids))

        t = host.to(device)
        token = dict(zip(per_token, t[h_token].unbind(0)))
        self.positions, self.swa_slots = token["positions"], token["swa_slots"]
        self.window = KVIndex(t[h_window], token["window_lens"])
        self.ape_index = {m: token[f"ape{m}"] for m in ratios}
        self.hca = KVIndex(t[h_hca], token["hca_lens"]) if h_hca is not None else None
        self.csa_lens = token.get("csa_lens")
        self.indexer_groups = [QueryGroup(t[a][0], t[b], t[a][1], vis) for a, b, vis in groups]
        self.emissions = {key: em(t) for key, em in emissions.items()}
        self.logit_rows = None if h_logits is None else t[h_logits]
        self.input_ids = batch.input_ids if h_ids is None else t[h_ids]

    # ---- addressing (host) ----------------------------------------------------------------
    def _swa_slot(self, req: np.ndarray, pos: np.ndarray) -> np.ndarray:
        p = self.page_size
        return self._swa_pt[req, pos // p] * p + pos % p

    def _entry_slot(self, req: np.ndarray, w: np.ndarray, ratio: int) -> np.ndarray:
        p, tok = self.page_size, w * ratio
        return self._pt[req, tok // p] * (p // ratio) + (tok % p) // ratio

    def _entry_lists(self, req: np.ndarray, count: np.ndarray, ratio: int) -> np.ndarray:
        """`[len(req), max(count)]`: item w of row i is the slot of entry w of request `req[i]`
        for `w < count[i]`, else -1."""
        per_page = self.page_size // ratio  # a page's entries have consecutive slots
        width = int(count.max(initial=0))
        pages = -(-width // per_page)
        slots = self._pt[req, :pages, None] * per_page + np.arange(per_page)  # [R, pages, per_page]
        slots = slots.reshape(len(req), pages * per_page)[:, :width]
        if count.min(initial=width) == width:  # every row full (batch-1 decode): no padding to write
            return slots
        return np.where(np.arange(width) < count[:, None], slots, -1)

    def _window_lists(self, lens: np.ndarray) -> np.ndarray:
        """`[N, max(lens)]`: each query's window positions pos, pos-1, ... as SWA slots, -1 padded."""
        back = self._pos[:, None] - np.arange(int(lens.max()))
        return np.where(back >= 0, self._swa_slot(self._req[:, None], back.clip(0)), -1)

    def _indexer_groups(self, host: _HostBuffer, visible: np.ndarray, m: int) -> list[tuple[int, int, np.ndarray]]:
        """CSA: the indexer's query groups (decode tokens together, each longer chunk alone),
        each row's candidates being its request's entries."""
        singles = np.flatnonzero(self._ext == 1)
        groups = ([singles] if len(singles) else []) + [np.array([i]) for i in np.flatnonzero(self._ext > 1)]
        handles = []
        for reqs in groups:
            tokens = self._starts[reqs][:, None] + np.arange(int(self._ext[reqs].max()))
            handles.append((host.add(np.stack([tokens, visible[tokens]])),
                            host.add(self._entry_lists(reqs, self._end[reqs] // m, m)), visible[tokens]))
        return handles

    # ---- compressor emissions ------------------------------------------------------------
    def _rows(self, req: np.ndarray, pos: np.ndarray, ring_size: int) -> np.ndarray:
        """`[4, ...]` row sources (`kernels.composed.gather_rows`) of positions `pos` of requests `req`."""
        prefix = self._prefix[req]
        from_batch = pos >= prefix
        return np.stack(np.broadcast_arrays(from_batch, np.where(from_batch, self._starts[req] + pos - prefix, 0),
                                            self._slots[req] * ring_size + np.maximum(pos, 0) % ring_size, pos >= 0))

    def _add_emission(self, host: _HostBuffer, m: int, overlap: bool):
        """Queue the emission plan's arrays; returns a builder of the plan from the device views.
        Nothing is queued for what does not happen in this batch (most decode steps close no
        window and no page)."""
        p, prefix, end = self.page_size, self._prefix, self._end
        window = 2 * m if overlap else m  # rows pooled into an entry
        ring_size = window + self.ring_extra  # rows a request's ring holds, addressed by position % ring_size
        keep_from = np.maximum(prefix, end - ring_size)
        ring_req, ring_pos = _ragged(end - keep_from, keep_from)
        h_ring = host.add(np.stack([self._slots[ring_req] * ring_size + ring_pos % ring_size,
                                    self._starts[ring_req] + ring_pos - prefix[ring_req]]))
        closing = end // m - prefix // m  # windows whose last token is in this batch, per request
        h_entries = h_rows = None
        if closing.any():
            ent_req, ent_w = _ragged(closing, prefix // m)
            slot_pos = (ent_w * m - (window - m))[:, None] + np.arange(window)
            h_entries = host.add(np.stack([self._entry_slot(ent_req, ent_w, m), ent_w * m]))
            h_rows = host.add(self._rows(ent_req[:, None], slot_pos, ring_size))
        pages = end // p - prefix // p  # page boundaries k*p in (prefix, end]
        h_snap = None
        if overlap and pages.any():
            snap_req, snap_k = _ragged(pages, prefix // p + 1)
            last = (snap_k * p - m)[:, None] + np.arange(m)
            homes = (self._pt[snap_req, snap_k - 1], self._swa_pt[snap_req, snap_k - 1])
            h_snap = (host.add(homes[1]), host.add(self._rows(snap_req[:, None], last, ring_size)), homes)

        def build(t: list[torch.Tensor]) -> EmissionPlan:
            ring_dest, ring_src = t[h_ring].unbind(0)
            plan = EmissionPlan(ring_dest=ring_dest, ring_src=ring_src)
            if h_entries is not None:
                plan.entry_slots, plan.entry_pos = t[h_entries].unbind(0)
                plan.num_entries, plan.row_source = plan.entry_slots.numel(), t[h_rows]
            if h_snap is not None:
                plan.snapshot_pages, plan.snapshot_source = t[h_snap[0]], t[h_snap[1]]
                plan.snapshot_homes = h_snap[2]
                plan.num_snapshots = plan.snapshot_pages.numel()
            return plan
        return build
