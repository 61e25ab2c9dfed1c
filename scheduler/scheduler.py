"""Continuous batching over the V4 model with chunked prefill, a compressed-KV radix
cache, retraction under memory pressure, abort, and fair admission under long prefills.

`Scheduler.step()` runs three phases: `schedule()` decides what runs (a decode token for
every running request plus prefill chunks up to the per-step token budget), makes room in
the pools and describes the step as `RunRequest`s; the model runner runs and samples it;
`process_results()` advances the requests, hands completed pages to the prefix cache and
reports what each request produced. It runs in-process (tests) or in the scheduler process.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..model.runner import ModelRunner, PromptScoring, RunOutput, RunRequest, SamplingRow, Speculation, TokenHistory
from .cache_manager import CacheManager
from .pools import MemoryPools, min_swa_pages
from .request import FinishReason, Request

POLICIES = ("fcfs", "lpm")
STOP_REGEX_TAIL_TOKENS = 64  # a stop_regex match is looked for in the text of the last this-many tokens
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
    spec_verify_steps: int = 0  # steps that verified drafts for this request so far
    spec_draft_tokens: int = 0  # drafts it verified so far
    spec_accepted_tokens: int = 0  # drafts it kept so far


@dataclass
class SchedulerStats:
    prefill_tokens: int = 0  # tokens computed for prompts (after cache hits)
    decode_tokens: int = 0
    cache_hit_tokens: int = 0
    retractions: int = 0
    steps: int = 0
    spec_verify_steps: int = 0  # request-steps that verified drafts
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_accepted_at: list[int] = field(default_factory=list)  # kept drafts by position (0 = first draft)
    spec_drafted_at: list[int] = field(default_factory=list)  # verified drafts by position


@dataclass
class ScheduledItem:
    req: Request
    tokens: int  # new tokens run this step
    run: RunRequest
    scores_prompt: bool  # the chunk produces prompt-token logprobs


class Scheduler:
    def __init__(self, runner: ModelRunner, pools: MemoryPools, chunked_prefill_size: int = 512,
                 policy: str = "fcfs", enable_prefix_cache: bool = True, max_running: int | None = None,
                 decode_text: Callable[[list[int]], str] | None = None, waiting_share: float = 0.25,
                 num_draft_tokens: int = 0, check_integrity: bool = False) -> None:
        """`waiting_share`: the part of the per-step token budget that the oldest running prefill
        leaves to other prefills and to requests waiting for admission, so one long prompt cannot
        hold back everything behind it. `num_draft_tokens`: speculative decoding with this many
        drafts per step (the runner's drafter proposes them). `check_integrity`: verify the page
        bookkeeping after every step (tests)."""
        if policy not in POLICIES:
            raise ValueError(f"schedule policy must be one of {POLICIES}, got {policy!r}")
        if chunked_prefill_size < 1:
            raise ValueError("chunked_prefill_size must be >= 1")
        if not 0 <= waiting_share < 1:
            raise ValueError(f"waiting_share must be in [0, 1), got {waiting_share}")
        if num_draft_tokens < 0 or (num_draft_tokens and runner.drafter is None):
            raise ValueError(f"num_draft_tokens={num_draft_tokens} needs a runner with a drafter")
        if runner.kv.shape.max_draft_tokens < num_draft_tokens:
            raise ValueError(f"the runner's compressor rings are sized for {runner.kv.shape.max_draft_tokens} "
                             f"drafts, not {num_draft_tokens}")
        if runner.page_size != pools.page_size:
            raise ValueError(f"the runner's page size {runner.page_size} differs from the pools' {pools.page_size}")
        self.runner = runner
        self.cfg = runner.cfg
        self.pools = pools
        self.page_size = pools.page_size
        self.chunk = chunked_prefill_size
        self.reserve = min(math.ceil(chunked_prefill_size * waiting_share), chunked_prefill_size - 1)
        self.policy = policy
        self.max_running = min(max_running or pools.slots.capacity, pools.slots.capacity)
        self.decode_text = decode_text
        self.debug_integrity = check_integrity
        self.num_draft_tokens = num_draft_tokens
        need = min_swa_pages(self.cfg, self.page_size, 1, chunked_prefill_size, num_draft_tokens)
        if pools.swa_pages.capacity < need:
            raise ValueError(f"the sliding-window pool has {pools.swa_pages.capacity} pages; one request with "
                             f"{chunked_prefill_size}-token prefill chunks needs {need}")
        self.cache = CacheManager(pools, self.cfg.sliding_window, enable_prefix_cache)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats(spec_accepted_at=[0] * num_draft_tokens, spec_drafted_at=[0] * num_draft_tokens)
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
                self.cache.release(req)
                self._finish_abort(req)
                return True
        return False

    def _finish_abort(self, req: Request) -> None:
        req.finish = FinishReason("abort")
        self._aborted.append(self._output(req, None, None, []))

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    # ---- one step -----------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        outputs, self._aborted = self._aborted, []
        batch = self.schedule()
        if batch:
            results = self.runner.run([item.run for item in batch])
            self.stats.steps += 1
            outputs += self.process_results(batch, results)
        if self.debug_integrity:
            self.check_integrity()
        return outputs

    def schedule(self) -> list[ScheduledItem]:
        """Choose this step's requests and token counts, give them their pages, describe the run."""
        plan = self._plan()
        while plan:  # make room; retraction may remove planned requests
            need = sum(self.cache.pages_needed(r, n + self._lookahead(r)) for r, n in plan)
            if self._make_room(need, [r for r, _ in plan]):
                break
            self._retract(plan.pop()[0])  # the plan alone does not fit: retract its last request
        plan = [(r, n) for r, n in plan if r in self.running]
        for req, n in plan:
            self.cache.allocate(req, n + self._lookahead(req))
        return [self._item(req, n) for req, n in plan]

    def _item(self, req: Request, n: int) -> ScheduledItem:
        scores = self._needs_input_logprobs(req)
        samples = req.pending <= n and req.params.max_new_tokens > 0
        tokens = req.tokens(req.computed, req.computed + n)
        drafts = req.drafts[:n - len(tokens)]
        run = RunRequest(slot=req.slot, prefix_len=req.computed, tokens=tokens + drafts, pages=req.pages,
                         swa_pages=req.swa_pages, restore_page=req.restore_page,
                         sampling=self._sampling_row(req) if samples else None,
                         scoring=self._prompt_scoring(req, n) if scores else None,
                         speculation=self._speculation(req, n, drafts, samples))
        return ScheduledItem(req, n, run, scores)

    def _speculation(self, req: Request, n: int, drafts: list[int], samples: bool) -> Speculation | None:
        """With speculation on, every request's step tells the drafter what it committed (a
        drafter with state, like MTP, follows every token); only eligible requests get drafts."""
        if not self.num_draft_tokens:
            return None
        history = TokenHistory(req.prompt_ids, req.output_ids)  # by reference: no per-step copy
        following = history[req.computed + n] if req.pending > n else None
        next_k = self.num_draft_tokens if samples and self._speculates(req) else 0
        return Speculation(req.rid, history, drafts, _first_rows(req.draft_probs, len(drafts)), next_k, following)

    def process_results(self, batch: list[ScheduledItem], results: list[RunOutput]) -> list[StepOutput]:
        """Advance each request by what ran, cache its completed pages, emit its new tokens."""
        outputs = []
        for item, res in zip(batch, results):
            req, n = item.req, item.tokens
            if req.output_ids and req.pending == 1:
                self.stats.decode_tokens += len(res.tokens)
            else:
                self.stats.prefill_tokens += n
            if item.scores_prompt:
                if req.computed == 0 and req.logprob_start_len == 0:  # the first token has no prediction
                    req.input_logprobs.append(None)
                    req.input_top_logprobs.append([])
                req.input_logprobs += res.prompt_logprobs or []
                req.input_top_logprobs += res.prompt_top_logprobs or []
            if item.run.speculation is not None:
                self._record_speculation(req, item.run.speculation, res)
            if res.tokens:
                outputs += self._append_tokens(req, res)
                req.computed = req.num_tokens - 1  # the last committed token and every kept draft
            else:
                req.computed += n
            req.restore_page = None
            self.cache.insert_full_pages(req)
            self.cache.drop_old_windows(req)
            if req.pending == 0 and req.params.max_new_tokens == 0:
                req.finish = FinishReason("length")
                outputs.append(self._output(req, None, None, []))
            if req.finish is not None:
                self.running.remove(req)
                self.cache.release(req)
        return outputs

    def _record_speculation(self, req: Request, spec: Speculation, res: RunOutput) -> None:
        req.drafts, req.draft_probs = res.drafts, res.draft_probs
        if not spec.drafts:
            return
        st = self.stats
        req.spec_verify_steps += 1
        req.spec_draft_tokens += len(spec.drafts)
        req.spec_accepted_tokens += res.accepted
        st.spec_verify_steps += 1
        st.spec_draft_tokens += len(spec.drafts)
        st.spec_accepted_tokens += res.accepted
        for counts, n in ((st.spec_accepted_at, res.accepted), (st.spec_drafted_at, len(spec.drafts))):
            counts += [0] * (len(spec.drafts) - len(counts))
            for i in range(n):
                counts[i] += 1

    def check_integrity(self) -> None:
        """Raise `IntegrityError` if the pools, the tree and the running requests disagree."""
        self.cache.check_integrity(self.running)

    # ---- planning -------------------------------------------------------------------------------
    def _order_waiting(self) -> None:
        if self.policy == "lpm" and len(self.waiting) > 1:
            ranked = sorted(self.waiting, key=lambda r: -len(self.cache.match(r).nodes))
            self.waiting = deque(ranked)

    def _can_admit(self) -> bool:
        return self.pools.slots.available > 0 and len(self.running) < self.max_running

    def _plan(self) -> list[tuple[Request, int]]:
        """(request, tokens to run) for this step. Decodes always run. The oldest running prefill
        leaves `reserve` tokens of the budget to later prefills and to admissions when any are
        waiting, so a request that arrives during a long prefill starts at the next step."""
        plan: list[tuple[Request, int]] = [(r, 1 + len(self._usable_drafts(r))) for r in self.running
                                           if r.pending == 1]
        prefilling = [r for r in self.running if r.pending > 1]
        others_want = len(prefilling) > 1 or (bool(self.waiting) and self._can_admit())
        budget = self.chunk
        for i, req in enumerate(prefilling):
            limit = budget - self.reserve if i == 0 and others_want else budget
            if limit > 0:
                n = min(req.pending, limit)
                plan.append((req, n))
                budget -= n
        self._order_waiting()
        deferred: list[Request] = []
        while self.waiting and budget > 0 and self._can_admit():
            req = self.waiting[0]
            match = self.cache.match(req)
            if self._prefix_being_computed(req, len(match.nodes)):
                deferred.append(self.waiting.popleft())
                continue
            if not self.cache.admit(req, match):
                break
            self.stats.cache_hit_tokens += req.computed
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
        if not self.cache.shares_prefixes:
            return False
        p, reusable = self.page_size, self.cache.max_reuse_pages(req)
        if first >= reusable:
            return False
        end = (first + 1) * p
        page = req.tokens(end - p, end)
        return any(other.computed < end <= len(other.prompt_ids) and other.tokens(end - p, end) == page
                   for other in self.running)

    def _make_room(self, pages: int, protect: list[Request]) -> bool:
        """Room for `pages` new pages: from the prefix cache first, then by retracting running
        requests not in `protect`."""
        while not self.cache.free_from_cache(pages, self.running):
            victims = [r for r in self.running if r not in protect]
            if not victims:
                return False
            self._retract(max(victims, key=lambda r: (r.pending, r.num_tokens)))
        return True

    def _retract(self, req: Request) -> None:
        """Send a running request back to the queue; its cached pages stay in the tree."""
        self.running.remove(req)
        self.cache.release(req)
        req.retractions += 1
        if not req.output_ids:  # its prompt logprobs are recomputed after re-admission
            req.input_logprobs, req.input_top_logprobs = [], []
        self.stats.retractions += 1
        self.waiting.appendleft(req)

    # ---- per-request step data --------------------------------------------------------------------
    def _speculates(self, req: Request) -> bool:
        """Whether `req` decodes speculatively. Grammars, penalties, logit bias, logprobs and a
        pending `min_new_tokens` need per-position state the first version does not keep: those
        requests decode one token per step."""
        p = req.params
        return bool(self.num_draft_tokens) and not (
            req.constraint is not None or req.return_logprob or req.wants_input_logprobs or p.logit_bias
            or p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
            or len(req.output_ids) < p.min_new_tokens)

    def _lookahead(self, req: Request) -> int:
        """Positions past this step a drafter may write provisional state at (MTP's chain)."""
        if not self._speculates(req):
            return 0
        return max(0, min(self.num_draft_tokens, self.pools.sizes.max_tokens - req.num_tokens - self.num_draft_tokens))

    def _usable_drafts(self, req: Request) -> list[int]:
        """The drafts `req` verifies this step: none past its token limit."""
        if not req.drafts or not self._speculates(req):
            return []
        return req.drafts[:max(0, req.params.max_new_tokens - len(req.output_ids) - 1)]

    def _needs_input_logprobs(self, req: Request) -> bool:
        return req.wants_input_logprobs and req.computed < len(req.prompt_ids)

    @staticmethod
    def _prompt_scoring(req: Request, n: int) -> PromptScoring:
        """The prompt tokens whose logprobs this chunk's logits give: row j (position
        computed + j) predicts the token at position computed + j + 1."""
        c, prompt = req.computed, req.prompt_ids
        first, end = max(req.logprob_start_len, c + 1), min(c + n + 1, len(prompt))
        return PromptScoring(first - 1 - c, prompt[first:end] if first < end else [], req.top_logprobs_num)

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

    def _append_tokens(self, req: Request, res: RunOutput) -> list[StepOutput]:
        """Append what the request emitted, one token at a time; a stop ends it there."""
        outputs = []
        for token in res.tokens:
            req.output_ids.append(token)
            top = res.top_logprobs or []
            if req.return_logprob:
                req.output_logprobs.append(res.logprob)
                req.output_top_logprobs.append(top)
            req.finish = self._advance_constraint(req, token) or self._check_stop(req, token)
            outputs.append(self._output(req, token, res.logprob, top))
            if req.finish is not None:
                break
        return outputs

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
        if p.stop_regex:  # a match ending at the new token lies in the tail; earlier ones were seen before
            text = self.decode_text(req.output_ids[-STOP_REGEX_TAIL_TOKENS:])
            for pattern in p.stop_regex:
                match = re.search(pattern, text)
                if match:
                    return match.group(0)
        return None

    def _output(self, req: Request, token: int | None, logprob: float | None,
                top: list[tuple[int, float]]) -> StepOutput:
        out = StepOutput(req.rid, token, logprob, top, req.finish, len(req.prompt_ids), req.cached_tokens,
                         len(req.output_ids), spec_verify_steps=req.spec_verify_steps,
                         spec_draft_tokens=req.spec_draft_tokens, spec_accepted_tokens=req.spec_accepted_tokens)
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
            "cached_pages": self.cache.cached_pages,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "cache_hit_tokens": self.stats.cache_hit_tokens,
            "prefill_tokens": self.stats.prefill_tokens,
            "decode_tokens": self.stats.decode_tokens,
            "retractions": self.stats.retractions,
            "evicted_pages": self.cache.evicted_pages,
            "steps": self.stats.steps,
            "spec_verify_steps": self.stats.spec_verify_steps,
            "spec_draft_tokens": self.stats.spec_draft_tokens,
            "spec_accepted_tokens": self.stats.spec_accepted_tokens,
            "spec_accepted_at": list(self.stats.spec_accepted_at),
        }


def _first_rows(probs: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if probs is None else probs[:n]
