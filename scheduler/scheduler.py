"""Continuous batching over the V4 model with chunked prefill, a compressed-KV radix
cache, retraction under memory pressure, and abort.

`Scheduler.step()` builds one ragged batch (a decode token for every running request
plus prefill chunks up to the chunk budget), makes room in the pools, runs the model,
samples, inserts newly completed pages into the radix cache, and returns what each
request produced. It runs in-process (tests) or inside the scheduler process.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..model.batch import ForwardBatch
from ..model.network import DeepseekV4
from ..model.sampling import SamplingRow, sample
from .pools import MemoryPools, min_swa_pages
from .radix_cache import Match, RadixCache
from .request import FinishReason, Request

POLICIES = ("fcfs", "lpm")


@dataclass
class StepOutput:
    rid: str
    token: int | None  # None when the request finished without a new token (abort)
    logprob: float | None
    top_logprobs: list[tuple[int, float]]
    finish: FinishReason | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    input_logprobs: list[float | None] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class SchedulerStats:
    prefill_tokens: int = 0  # tokens computed for prompts (after cache hits)
    decode_tokens: int = 0
    cache_hit_tokens: int = 0
    retractions: int = 0
    evicted_pages: int = 0
    steps: int = 0


class Scheduler:
    def __init__(self, model: DeepseekV4, pools: MemoryPools, chunked_prefill_size: int = 512,
                 policy: str = "fcfs", enable_prefix_cache: bool = True, max_running: int | None = None,
                 decode_text: Callable[[list[int]], str] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"schedule policy must be one of {POLICIES}, got {policy!r}")
        if chunked_prefill_size < 1:
            raise ValueError("chunked_prefill_size must be >= 1")
        self.model = model
        self.cfg = model.cfg
        self.pools = pools
        self.page_size = pools.page_size
        self.chunk = chunked_prefill_size
        self.policy = policy
        self.enable_prefix_cache = enable_prefix_cache
        self.max_running = min(max_running or pools.slots.capacity, pools.slots.capacity)
        self.decode_text = decode_text
        need = min_swa_pages(self.cfg, self.page_size, 1, chunked_prefill_size)
        if pools.swa_pages.capacity < need:
            raise ValueError(f"the sliding-window pool has {pools.swa_pages.capacity} pages; one request with "
                             f"{chunked_prefill_size}-token prefill chunks needs {need}")
        self.cache = RadixCache(self.page_size, self.cfg.sliding_window, pools.pages.free, pools.swa_pages.free)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        self._aborted: list[StepOutput] = []

    # ---- intake -----------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        if len(req.prompt_ids) == 0:
            raise ValueError("a request needs at least one prompt token")
        if not -1 <= req.logprob_start_len < len(req.prompt_ids):
            raise ValueError(f"logprob_start_len must be -1 or in [0, {len(req.prompt_ids)}), "
                             f"got {req.logprob_start_len}")
        if len(req.prompt_ids) + req.params.max_new_tokens > self.pools.sizes.max_tokens:
            raise ValueError(f"request {req.rid} needs {len(req.prompt_ids) + req.params.max_new_tokens} tokens; "
                             f"the pools hold {self.pools.sizes.max_tokens}")
        if req.params.seed is not None:
            req.generator = torch.Generator().manual_seed(req.params.seed)
        self.waiting.append(req)

    def abort(self, rid: str) -> bool:
        for req in list(self.waiting):
            if req.rid == rid:
                self.waiting.remove(req)
                self._finish_abort(req)
                return True
        for req in self.running:
            if req.rid == rid:
                self.running.remove(req)
                self._release(req)
                self._finish_abort(req)
                return True
        return False

    def _finish_abort(self, req: Request) -> None:
        req.finish = FinishReason("abort")
        self._aborted.append(self._output(req, None, None, []))

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    # ---- cache bookkeeping --------------------------------------------------------------------
    def _cached_prefix(self, req: Request) -> Match:
        """The cached prefix `req` may resume from (none with the cache off)."""
        if self.enable_prefix_cache:
            return self.cache.match_prefix(req.seq, max_pages=self._max_reuse_pages(req))
        return self.cache.match_prefix([], 0)

    def _admit(self, req: Request, match: Match) -> bool:
        """Give `req` a slot and its cached prefix `match`. False if no slot is free."""
        if self.pools.slots.available == 0 or len(self.running) >= self.max_running:
            return False
        req.slot = self.pools.slots.alloc(1)[0]
        req.pages, req.swa_pages = match.pages, [p for p in match.swa_pages]
        req.inserted_pages = len(match.nodes)
        req.computed = req.cached_tokens = len(match.nodes) * self.page_size
        req.last_node = match.last
        self.cache.lock(match.last)
        if req.computed:
            self.pools.kv.restore_compressor_state(req.slot, req.pages[-1], req.computed)
        self.stats.cache_hit_tokens += req.computed
        return True

    def _max_reuse_pages(self, req: Request) -> int:
        """Pages of a cached prefix `req` may reuse: at least one token must be computed, and
        prompt positions whose logprobs were asked for (and not yet produced) must be too."""
        last = len(req.seq) - 1
        if req.wants_input_logprobs and not req.output_ids:
            last = min(last, max(req.logprob_start_len - 1, 0))
        return last // self.page_size

    def _release(self, req: Request) -> None:
        """Return a request's private pages and slot; its tree pages stay cached."""
        self.cache.unlock(req.last_node)
        self.pools.pages.free(sorted(req.owned_pages))
        self.pools.swa_pages.free(sorted(req.owned_swa_pages))
        if req.slot is not None:
            self.pools.slots.free([req.slot])
        req.slot, req.last_node = None, None
        req.pages, req.swa_pages = [], []
        req.owned_pages, req.owned_swa_pages = set(), set()
        req.swa_dropped = 0
        req.computed = req.inserted_pages = 0

    def _insert_full_pages(self, req: Request) -> None:
        if not self.enable_prefix_cache:
            return
        p, seq = self.page_size, req.seq
        parent = req.last_node or self.cache.root
        while (req.inserted_pages + 1) * p <= req.computed:
            k = req.inserted_pages
            node, took_page, took_swa = self.cache.insert_page(parent, tuple(seq[k * p:(k + 1) * p]),
                                                               req.pages[k], req.swa_pages[k])
            if took_page:
                req.owned_pages.discard(req.pages[k])
            if took_swa:
                req.owned_swa_pages.discard(req.swa_pages[k])
            self.cache.lock(node)
            self.cache.unlock(req.last_node)
            req.last_node = parent = node
            req.inserted_pages += 1

    def _pages_needed(self, req: Request, extend: int) -> int:
        return max(0, -(-(req.computed + extend) // self.page_size) - len(req.pages))

    def _make_room(self, pages: int, protect: list[Request]) -> bool:
        """Free `pages` compressed and SWA pages: drop cached windows and prefixes first,
        then retract running requests not in `protect`."""
        pools = self.pools
        while True:
            short, short_swa = pages - pools.pages.available, pages - pools.swa_pages.available
            if short <= 0 and short_swa <= 0:
                return True
            if short_swa > 0 and self.cache.tombstone_swa(short_swa, self._windows_in_use()):
                continue
            freed = self.cache.evict(max(short, short_swa))
            self.stats.evicted_pages += freed
            if freed:
                continue
            victims = [r for r in self.running if r not in protect]
            if not victims:
                return False
            self._retract(max(victims, key=lambda r: (r.pending, len(r.seq))))

    def _first_live_page(self, req: Request) -> int:
        """The first page whose sliding-window KV the request's next tokens can still attend to."""
        return max(0, req.computed - self.cfg.sliding_window) // self.page_size

    def _windows_in_use(self) -> set:
        """Tree nodes holding sliding-window KV that a running request still attends to."""
        protected = set()
        for req in self.running:
            node, live = req.last_node, self._first_live_page(req)
            while node is not None and node is not self.cache.root and node.depth - 1 >= live:
                protected.add(node)
                node = node.parent
        return protected

    def _drop_old_windows(self, req: Request) -> None:
        """Forget sliding-window pages behind the request's window; free the private ones.
        Pages in the radix tree keep theirs (a resume point) until memory runs short."""
        live = min(self._first_live_page(req), len(req.swa_pages))
        for k in range(req.swa_dropped, live):
            swa = req.swa_pages[k]
            if swa is not None and swa in req.owned_swa_pages:
                req.owned_swa_pages.discard(swa)
                self.pools.swa_pages.free([swa])
            req.swa_pages[k] = None
        req.swa_dropped = max(req.swa_dropped, live)

    def _retract(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.retractions += 1
        if not req.output_ids:  # its prompt logprobs are recomputed after re-admission
            req.input_logprobs, req.input_top_logprobs = [], []
        self.stats.retractions += 1
        self.waiting.appendleft(req)

    def _allocate(self, req: Request, extend: int) -> None:
        n = self._pages_needed(req, extend)
        if n:
            pages, swa = self.pools.pages.alloc(n), self.pools.swa_pages.alloc(n)
            req.pages += pages
            req.swa_pages += swa
            req.owned_pages.update(pages)
            req.owned_swa_pages.update(swa)

    # ---- one step -----------------------------------------------------------------------------
    def _order_waiting(self) -> None:
        if self.policy == "lpm" and len(self.waiting) > 1 and self.enable_prefix_cache:
            ranked = sorted(self.waiting, key=lambda r: -len(self._cached_prefix(r).nodes))
            self.waiting = deque(ranked)

    def _plan(self) -> list[tuple[Request, int]]:
        """(request, tokens to run) for this step."""
        plan: list[tuple[Request, int]] = []
        budget = self.chunk
        for req in list(self.running):
            if req.pending == 1:
                plan.append((req, 1))
        for req in list(self.running):
            if req.pending > 1 and budget > 0:
                n = min(req.pending, budget)
                plan.append((req, n))
                budget -= n
        self._order_waiting()
        deferred: list[Request] = []
        while self.waiting and budget > 0:
            req = self.waiting[0]
            match = self._cached_prefix(req)
            if self._prefix_being_computed(req, len(match.nodes)):
                deferred.append(self.waiting.popleft())
                continue
            if not self._admit(req, match):
                break
            self.waiting.popleft()
            self.running.append(req)
            n = min(req.pending, budget)
            plan.append((req, n))
            budget -= n
        self.waiting.extendleft(reversed(deferred))
        return plan

    def _prefix_being_computed(self, req: Request, first: int) -> bool:
        """Whether a running request is still prefilling page `first` of `req`, the first one
        the cache lacks. Admitting `req` after that page is cached reuses it instead of
        computing it twice (requests sharing a system prompt often arrive together)."""
        if not self.enable_prefix_cache:
            return False
        p, reusable = self.page_size, self._max_reuse_pages(req)
        if first >= reusable:
            return False
        end = (first + 1) * p
        page = req.seq[end - p:end]
        return any(other.computed < end <= len(other.prompt_ids) and other.seq[end - p:end] == page
                   for other in self.running)

    def step(self) -> list[StepOutput]:
        outputs, self._aborted = self._aborted, []
        plan = self._plan()
        # make room; retraction may remove planned requests
        while plan:
            need = sum(self._pages_needed(r, n) for r, n in plan)
            if self._make_room(need, [r for r, _ in plan]):
                break
            victim = plan.pop()[0]  # the plan alone does not fit: retract its last request
            self._retract(victim)
        plan = [(r, n) for r, n in plan if r in self.running]
        if not plan:
            return outputs
        for req, n in plan:
            self._allocate(req, n)
        all_logits = any(self._needs_input_logprobs(r) for r, _ in plan)
        logits = self._forward(plan, all_logits)
        self.stats.steps += 1
        rows, samplers, start = [], [], 0
        for i, (req, n) in enumerate(plan):
            is_decode = req.pending == n and n == 1 and len(req.output_ids) > 0
            if is_decode:
                self.stats.decode_tokens += 1
            else:
                self.stats.prefill_tokens += n
            if all_logits and self._needs_input_logprobs(req):
                self._collect_input_logprobs(req, logits[start:start + n])
            req.computed += n
            self._insert_full_pages(req)
            self._drop_old_windows(req)
            if req.pending == 0 and req.params.max_new_tokens == 0:
                req.finish = FinishReason("length")
                self.running.remove(req)
                self._release(req)
                outputs.append(self._output(req, None, None, []))
            elif req.pending == 0:
                rows.append(start + n - 1 if all_logits else i)
                samplers.append((req, self._sampling_row(req)))
            start += n
        if rows:
            picked = logits if rows == list(range(logits.shape[0])) else logits[rows]  # no copy in steady decode
            result = sample(picked, [row for _, row in samplers])
            for j, (req, _) in enumerate(samplers):
                outputs.append(self._append_token(req, result.tokens[j], result.logprobs[j],
                                                  result.top_logprobs[j]))
        return outputs

    def _needs_input_logprobs(self, req: Request) -> bool:
        return req.wants_input_logprobs and req.computed < len(req.prompt_ids)

    def _collect_input_logprobs(self, req: Request, logits: torch.Tensor) -> None:
        """Append the logprobs of the prompt tokens this chunk's logits predict.

        Row j (position computed + j) predicts the token at position computed + j + 1; the
        first prompt token has no prediction and is reported as None."""
        c, prompt, k = req.computed, req.prompt_ids, req.top_logprobs_num
        first, end = max(req.logprob_start_len, c + 1), min(c + logits.shape[0] + 1, len(prompt))
        if c == 0 and req.logprob_start_len == 0:
            req.input_logprobs.append(None)
            req.input_top_logprobs.append([])
        if first >= end:
            return
        logprobs = torch.log_softmax(logits[first - 1 - c:end - 1 - c], dim=-1)
        targets = torch.tensor(prompt[first:end], device=logprobs.device)
        req.input_logprobs += logprobs.gather(1, targets[:, None])[:, 0].tolist()
        if k:
            vals, ids = torch.topk(logprobs, k, dim=-1)
            req.input_top_logprobs += [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
        else:
            req.input_top_logprobs += [[] for _ in range(end - first)]

    def _forward(self, plan: list[tuple[Request, int]], all_logits: bool) -> torch.Tensor:
        device = self.model.device
        ids, prefix, extend, slots = [], [], [], []
        width = max(len(r.pages) for r, _ in plan)
        page_table = torch.zeros(len(plan), width, dtype=torch.long)
        swa_table = torch.zeros(len(plan), width, dtype=torch.long)
        for i, (req, n) in enumerate(plan):
            ids += req.seq[req.computed:req.computed + n]
            prefix.append(req.computed)
            extend.append(n)
            slots.append(req.slot)
            page_table[i, :len(req.pages)] = torch.tensor(req.pages)
            swa_table[i, :len(req.swa_pages)] = torch.tensor([s if s is not None else 0 for s in req.swa_pages])
        batch = ForwardBatch(torch.tensor(ids, dtype=torch.long, device=device), prefix, extend, slots,
                             page_table.to(device), swa_table.to(device), all_logits=all_logits)
        return self.model(batch, self.pools.kv)

    def _sampling_row(self, req: Request) -> SamplingRow:
        p = req.params
        return SamplingRow(
            temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
            presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty, logit_bias=p.logit_bias,
            prompt_ids=req.prompt_ids, output_ids=req.output_ids, generator=req.generator,
            allowed=req.constraint.allowed() if req.constraint else None,
            banned=self._stop_ids(req) if len(req.output_ids) < p.min_new_tokens else [],
            top_logprobs=req.top_logprobs_num if req.return_logprob else 0, logprob=req.return_logprob,
        )

    def _append_token(self, req: Request, token: int, logprob: float,
                      top: list[tuple[int, float]]) -> StepOutput:
        req.output_ids.append(token)
        if req.return_logprob:
            req.output_logprobs.append(logprob)
            req.output_top_logprobs.append(top)
        req.finish = self._advance_constraint(req, token) or self._check_stop(req, token)
        if req.finish is not None:
            self.running.remove(req)
            self._release(req)
        return self._output(req, token, logprob, top)

    @staticmethod
    def _advance_constraint(req: Request, token: int) -> FinishReason | None:
        """Feed the sampled token to the request's grammar; a rejection ends the request
        (it cannot happen when the mask was applied, but must not crash the scheduler)."""
        if req.constraint is None:
            return None
        try:
            req.constraint.accept(token)
        except ValueError as exc:
            return FinishReason("abort", message=f"constrained decoding failed: {exc}")
        return None

    def _stop_ids(self, req: Request) -> list[int]:
        return ([] if req.params.ignore_eos else [self.cfg.eos_token_id]) + list(req.params.stop_token_ids)

    def _check_stop(self, req: Request, token: int) -> FinishReason | None:
        p = req.params
        if len(req.output_ids) >= p.min_new_tokens:
            if token in self._stop_ids(req):
                return FinishReason("stop", token)
            if (p.stop or p.stop_regex) and self.decode_text is not None:
                matched = self._stop_text(req)
                if matched is not None:
                    return FinishReason("stop", matched)
        if len(req.output_ids) >= p.max_new_tokens:
            return FinishReason("length")
        return None

    def _stop_text(self, req: Request) -> str | None:
        """The stop string or stop-regex match the output now ends with, if any."""
        p = req.params
        if p.stop:
            longest = max(len(s) for s in p.stop)
            tail = self.decode_text(req.output_ids[-(longest + 8):])
            for s in p.stop:
                if s in tail:
                    return s
        if p.stop_regex:
            text = self.decode_text(req.output_ids)
            for pattern in p.stop_regex:
                match = re.search(pattern, text)
                if match:
                    return match.group(0)
        return None

    def _output(self, req: Request, token: int | None, logprob: float | None,
                top: list[tuple[int, float]]) -> StepOutput:
        out = StepOutput(req.rid, token, logprob, top, req.finish, len(req.prompt_ids), req.cached_tokens,
                         len(req.output_ids))
        if req.wants_input_logprobs and len(req.output_ids) <= 1 and len(req.input_logprobs) == \
                len(req.prompt_ids) - req.logprob_start_len:
            out.input_logprobs, out.input_top_logprobs = req.input_logprobs, req.input_top_logprobs
        return out

    # ---- maintenance ----------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop every cached prefix. Refused (False) while requests are running."""
        if self.running or self.waiting:
            return False
        self.cache.flush()
        return True

    def usage(self) -> dict:
        return {
            **self.pools.usage(),
            "cached_pages": self.cache.num_nodes,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "cache_hit_tokens": self.stats.cache_hit_tokens,
            "prefill_tokens": self.stats.prefill_tokens,
            "decode_tokens": self.stats.decode_tokens,
            "retractions": self.stats.retractions,
            "evicted_pages": self.stats.evicted_pages,
            "steps": self.stats.steps,
        }
