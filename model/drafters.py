"""Drafters for speculative decoding: what proposes the tokens the target then verifies.

`ContextDrafter` is the base of drafters that need only a request's tokens (scripted drafts
in tests, n-gram lookup). `MTPDrafter` runs V4's own MTP layer: after every step it extends
the layer over the positions the step committed (target streams at `p`, token at `p + 1`),
then chains `K - 1` single-token MTP passes, each fed the previous pass's output streams.

MTP state is positional like the rest of V4's: its sliding-window KV lives in the request's
SWA pages (cached and tombstoned with them), and positions past the committed length are
provisional and rewritten by the next step's extend. One position per cached page depends on
the token after the page (MTP at `B - 1` reads token `B`), so the drafter keeps the target's
streams at each page's last position and recomputes that row when a request resumes there.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .kv_cache import CacheShape, LayerCache
from .network import DeepseekV4
from .runner import RunOutput, RunRequest, TokenHistory, forward_batch
from .sampling import SamplingRow, target_distribution


class ContextDrafter:
    """Base of drafters that propose from a request's committed tokens alone."""

    needs_streams = False

    def propose(self, key: str, context: TokenHistory, k: int) -> tuple[list[int], torch.Tensor | None]:
        """`k` drafts to follow `context` (prompt, output, this step's tokens; a view, read only
        what is needed) and the distribution `[k, V]` each was drawn from (None: greedy drafts)."""
        raise NotImplementedError

    def draft(self, requests: list[RunRequest], outputs: list[RunOutput], streams: torch.Tensor | None) -> None:
        for r, out in zip(requests, outputs):
            spec = r.speculation
            if spec is not None and spec.next_k and out.tokens:
                out.drafts, out.draft_probs = self.propose(spec.key, spec.context + out.tokens, spec.next_k)


class MTPDrafter:
    """Drafts with the model's MTP layer (`mtp.0.*`)."""

    needs_streams = True

    def __init__(self, model: DeepseekV4, shape: CacheShape) -> None:
        if model.mtp is None:
            raise ValueError("MTP speculative decoding needs a model loaded with its MTP layer")
        self.model, self.page_size = model, shape.page_size
        self.cache, self.boundary = _mtp_state(model.cfg, shape, model.dtype, model.device)

    @staticmethod
    def bytes_per_page(cfg: ModelConfig, page_size: int, dtype: torch.dtype) -> tuple[int, int]:
        """What the drafter allocates per compressed page (its boundary streams) and per
        sliding-window page (the MTP layer's window KV), for sizing pools from a budget."""
        cache, boundary = _mtp_state(cfg, CacheShape(page_size, 1, 1, 1), dtype, torch.device("meta"))
        return boundary.nbytes, cache.swa.nbytes

    def draft(self, requests: list[RunRequest], outputs: list[RunOutput], streams: torch.Tensor | None) -> None:
        assert streams is not None, "the MTP drafter needs the target's streams"
        rows, inputs, chained = [], [], []
        start = 0
        for r, out in zip(requests, outputs):
            n = len(r.tokens)
            if r.speculation is not None:
                row = self._extend_row(r, out, streams[start:start + n])
                if row is not None:
                    rows.append(row[0])
                    inputs.append(row[1])
                    if r.speculation.next_k and out.tokens:
                        chained.append((len(rows) - 1, r, out))
            start += n
        if not rows:
            return
        logits, out_streams = self.model.forward_mtp(forward_batch(rows), self.cache, torch.cat(inputs),
                                                     self.page_size)
        self._chain(rows, chained, logits, out_streams)

    def _extend_row(self, r: RunRequest, out: RunOutput, step_streams: torch.Tensor):
        """The MTP batch row covering the positions this step committed for `r`, and its input
        streams; None when no position has its next token yet."""
        spec = r.speculation
        n_committed = out.accepted + 1 if spec.drafts else len(r.tokens)
        nexts = r.tokens[1:n_committed] + (out.tokens[-1:] if out.tokens else
                                           [spec.following] if spec.following is not None else [])
        x = step_streams[:len(nexts)]  # [m, n, D]
        self._save_boundaries(r, r.prefix_len, step_streams[:n_committed])
        first = r.prefix_len
        if r.restore_page is not None:  # resume: redo the row before the cached boundary
            x = torch.cat([self.boundary[r.restore_page].unsqueeze(0), x])
            nexts = [r.tokens[0]] + nexts
            first -= 1
        if not nexts:
            return None
        return (first, nexts, r.slot, r.pages, r.swa_pages), x

    def _save_boundaries(self, r: RunRequest, first: int, committed: torch.Tensor) -> None:
        p = self.page_size
        for pos in range(first, first + committed.shape[0]):
            if (pos + 1) % p == 0:
                self.boundary[r.pages[pos // p]] = committed[pos - first]

    def _chain(self, rows: list, chained: list, logits: torch.Tensor, out_streams: torch.Tensor) -> None:
        """Draft 1 from the extend's last rows, then one MTP pass per further draft."""
        ends = torch.tensor([len(row[1]) for row in rows]).cumsum(0) - 1
        state = {i: out_streams[int(ends[i])].unsqueeze(0) for i, _, _ in chained}
        last_pos = {i: rows[i][0] + len(rows[i][1]) - 1 for i, _, _ in chained}
        drafts: dict[int, list[int]] = {i: [] for i, _, _ in chained}
        probs: dict[int, list[torch.Tensor]] = {i: [] for i, _, _ in chained}
        step_logits = {i: logits[i] for i, _, _ in chained}
        k_max = max((r.speculation.next_k for _, r, _ in chained), default=0)
        for step in range(k_max):
            for i, r, _ in chained:
                if step < r.speculation.next_k:
                    token, q = _draw(step_logits[i], r.sampling)
                    drafts[i].append(token)
                    probs[i].append(q)
            live = [(i, r) for i, r, _ in chained if step + 1 < r.speculation.next_k]
            if not live:
                break
            batch = forward_batch([(last_pos[i] + 1 + step, [drafts[i][-1]], r.slot, r.pages, r.swa_pages)
                                   for i, r in live])
            lg, st = self.model.forward_mtp(batch, self.cache, torch.cat([state[i] for i, _ in live]),
                                            self.page_size)
            for j, (i, _) in enumerate(live):
                step_logits[i], state[i] = lg[j], st[j:j + 1]
        for i, r, out in chained:
            out.drafts = drafts[i]
            out.draft_probs = None if r.sampling.greedy else torch.stack(probs[i])


def _mtp_state(cfg: ModelConfig, shape: CacheShape, dtype: torch.dtype,
               device: torch.device) -> tuple[LayerCache, torch.Tensor]:
    """The MTP layer's cache (its window KV in the SWA pages) and the target's streams at each
    compressed page's last position `[num_pages, n, D]`."""
    cache = LayerCache(cfg, cfg.num_layers, shape, dtype, device)
    return cache, torch.zeros(shape.num_pages, cfg.hc_mult, cfg.hidden_size, dtype=dtype, device=device)


def _draw(logits: torch.Tensor, row: SamplingRow) -> tuple[int, torch.Tensor | None]:
    """A draft token from MTP logits `[V]`: greedy for greedy requests, else a draw from the
    request's own sampling distribution (returned as `q` for rejection sampling)."""
    if row.greedy:
        return int(logits.argmax()), None
    q = target_distribution(logits.float(), row)
    return int(torch.multinomial(q.cpu(), 1, generator=row.generator)), q
