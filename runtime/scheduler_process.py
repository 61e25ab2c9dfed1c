"""The scheduler process: owns the model, the pools and the radix cache."""

from __future__ import annotations

import logging
import os
import time
import traceback

import torch
import zmq

from ..model import threads
from ..model.footprint import startup_facts
from ..model.drafters import MTPDrafter
from ..model.runner import ModelRunner
from ..scheduler.grammar import BackgroundCompiler, GrammarError, GrammarState, PendingGrammar
from ..scheduler.pools import MemoryPools, sizes_from_budget
from ..scheduler.request import FinishReason, Request
from ..scheduler.scheduler import Scheduler, StepOutput
from .options import EngineOptions
from .rank_worker import DataParallelRunner, LeaderRunner, join, load_shard, rank_device
from .protocol import (AbortRequest, ControlReply, ControlRequest, ErrorOut, GenerateRequest, RequestMeta,
                       SpecCounts, TokenBatch, TokenOut, encode, scheduler_decoder)
from .tokenizer import load_tokenizer
from .watchdog import Watchdog

log = logging.getLogger("banyan.scheduler")


def build_scheduler(opts: EngineOptions, rank: int = 0):
    """The scheduler and the tokenizer it decodes stop strings with; `rank`: this process's
    rank (with data-parallel attention every rank runs its own scheduler)."""
    dtype = getattr(torch, opts.dtype)
    speculate = opts.speculative_algorithm is not None
    parallel = join(opts, rank)
    model = load_shard(opts, parallel, rank_device(opts, rank), mtp="yes" if speculate else "no")
    cfg = model.cfg
    page_size = opts.page_size or cfg.min_page_size
    budget = opts.kv_cache_bytes
    if torch.device(opts.device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(opts.device))
        budget = int(free * opts.mem_fraction)
    k = opts.speculative_num_draft_tokens if speculate else 0
    sizes = sizes_from_budget(cfg, budget, page_size, opts.max_running_requests, dtype, opts.swa_fraction,
                              opts.chunked_prefill_size, kv_cache_dtype=opts.kv_cache_dtype, draft_tokens=k)
    pools = MemoryPools(sizes)
    tok = load_tokenizer(opts.model_path)
    shape = sizes.cache_shape(k)
    if opts.dp_size > 1:
        runner = DataParallelRunner(model, shape, parallel.world_comm, opts.kv_cache_dtype)
    elif opts.world_size > 1:
        runner = LeaderRunner(model, shape, parallel.world_comm, opts.kv_cache_dtype)
    else:
        runner = ModelRunner(model, shape, drafter=MTPDrafter(model, shape) if speculate else None,
                             kv_cache_dtype=opts.kv_cache_dtype)
    sched = Scheduler(runner, pools, chunked_prefill_size=opts.chunked_prefill_size,
                      policy=opts.schedule_policy, enable_prefix_cache=opts.enable_prefix_cache,
                      max_running=opts.max_running_requests, waiting_share=opts.prefill_waiting_share,
                      num_draft_tokens=k,
                      decode_text=lambda ids: tok.decode(ids, skip_special_tokens=False))
    return sched, tok


def _token_out(o: StepOutput, speculating: bool) -> TokenOut:
    spec = SpecCounts(o.spec_verify_steps, o.spec_draft_tokens, o.spec_accepted_tokens) if speculating else None
    return TokenOut(o.rid, o.token, o.logprob, o.top_logprobs, o.finish.to_dict() if o.finish else None,
                    o.prompt_tokens, o.cached_tokens, o.completion_tokens, o.input_logprobs, o.input_top_logprobs,
                    spec)


class SchedulerLoop:
    """Takes requests from the engine, runs scheduler steps, sends tokens to the detokenizer.

    Grammars compile on worker threads: a request with one waits in `_compiling` until its
    grammar is ready (or fails, or misses its deadline) and only then joins the scheduler, so a
    slow grammar never holds up the step loop. Every model step runs under the watchdog."""

    IDLE_POLL_MS = 100
    COMPILE_POLL_MS = 5  # while grammars compile: how soon a finished one is noticed

    def __init__(self, sched: Scheduler, recv: zmq.Socket, send: zmq.Socket, tokenizer,
                 grammar_timeout: float = 10.0, watchdog_timeout: float = 300.0) -> None:
        self.sched, self.recv, self.send = sched, recv, send
        self.grammars = BackgroundCompiler(tokenizer, sched.cfg.vocab_size, grammar_timeout)
        self._compiling: dict[str, tuple[GenerateRequest, PendingGrammar]] = {}
        self.watchdog = Watchdog(watchdog_timeout, self._describe_running)
        # tests only: every model step first sleeps this long, to trip the watchdog
        self._test_step_delay = float(os.environ.get("BANYAN_TEST_STEP_DELAY_S", "0"))
        self.lockstep = sched.runner if isinstance(sched.runner, DataParallelRunner) else None

    def _describe_running(self) -> str:
        return f"; running requests: {', '.join(r.rid for r in list(self.sched.running)[:16]) or 'none'}"

    def _check(self, msg: GenerateRequest) -> None:
        msg.params.validate(self.sched.cfg.vocab_size)
        if any(not 0 <= t < self.sched.cfg.vocab_size for t in msg.input_ids):
            raise ValueError("input_ids has a token id outside the vocabulary")

    def _admit(self, msg: GenerateRequest, constraint: GrammarState | None) -> None:
        req = Request(msg.rid, list(msg.input_ids), msg.params, msg.return_logprob, msg.top_logprobs_num,
                      logprob_start_len=msg.logprob_start_len, constraint=constraint)
        try:
            self.sched.add(req)
        except ValueError as exc:
            self._reject(msg.rid, str(exc))
            return
        p = msg.params
        self.send.send(encode(RequestMeta(msg.rid, list(p.stop), p.skip_special_tokens, list(p.stop_regex))))

    def _reject(self, rid: str, message: str) -> None:
        self.send.send(encode(ErrorOut(rid, message)))

    def _admit_compiled(self) -> None:
        """Admit the requests whose grammar is ready; fail those whose grammar failed."""
        for rid, (msg, pending) in list(self._compiling.items()):
            try:
                state = pending.result()
            except GrammarError as exc:
                del self._compiling[rid]
                log.warning("request %s: %s", rid, exc)
                self._reject(rid, str(exc))
                continue
            if state is not None:
                del self._compiling[rid]
                self._admit(msg, state)

    def _abort(self, rid: str) -> None:
        compiling = self._compiling.pop(rid, None)
        if compiling is None:
            self.sched.abort(rid)
            return
        compiling[1].cancel()  # the request never reached the scheduler: end it here
        finish = FinishReason("abort").to_dict()
        self.send.send(encode(TokenBatch([TokenOut(rid, None, None, [], finish, len(compiling[0].input_ids),
                                                   0, 0)])))

    def handle(self, msg) -> None:
        if isinstance(msg, GenerateRequest):
            try:
                self._check(msg)
            except ValueError as exc:
                self._reject(msg.rid, str(exc))
                return
            if msg.grammar is None:
                self._admit(msg, None)
            else:
                self._compiling[msg.rid] = (msg, self.grammars.submit(msg.grammar, list(msg.input_ids)))
        elif isinstance(msg, AbortRequest):
            self._abort(msg.rid)
        elif isinstance(msg, ControlRequest):
            if msg.action == "flush_cache":
                self.send.send(encode(ControlReply(msg.req_id, self.sched.flush_cache())))
            elif msg.action == "stats":
                self.send.send(encode(ControlReply(msg.req_id, True, self.sched.usage())))
            else:
                self.send.send(encode(ControlReply(msg.req_id, False, {"error": f"unknown action {msg.action}"})))

    def _step(self) -> None:
        with self.watchdog.step():
            if self._test_step_delay:
                time.sleep(self._test_step_delay)
            outs = self.sched.step()
        if outs:
            speculating = self.sched.num_draft_tokens > 0
            self.send.send(encode(TokenBatch([_token_out(o, speculating) for o in outs])))

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.recv, zmq.POLLIN)
        peers_busy = False
        while True:
            if self.sched.has_work() or peers_busy:
                timeout = 0
            else:
                timeout = self.COMPILE_POLL_MS if self._compiling else self.IDLE_POLL_MS
            while dict(poller.poll(timeout)).get(self.recv):
                self.handle(scheduler_decoder.decode(self.recv.recv()))
                timeout = 0
            if self._compiling:
                self._admit_compiled()
            if self.lockstep is not None:
                peers_busy = self._lockstep_step()
            elif self.sched.has_work():
                self._step()

    def _lockstep_step(self) -> bool:
        """Data-parallel attention: every rank steps when any has work, a rank whose scheduler
        runs no forward joining the MoE collectives with no tokens; whether any had work."""
        busy = self.sched.has_work()
        if not self.lockstep.any_busy(busy):
            return False
        if busy:
            self._step()
        self.lockstep.end_step()
        return True


def run_scheduler_process(opts: EngineOptions, in_addr: str, out_addr: str, ready, rank: int = 0) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx = zmq.Context()
    recv = ctx.socket(zmq.PULL)
    recv.bind(in_addr)
    send = ctx.socket(zmq.PUSH)
    send.connect(out_addr)
    try:
        sched, tok = build_scheduler(opts, rank)
    except Exception as exc:  # report start-up failures to the parent instead of hanging it
        ready.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    footprint = startup_facts(sched.runner.model, sched.runner.kv)
    log.info("weights: %.1f MiB resident (%s); KV (%s) per cached token: %.0f B compressed + %.0f B sliding "
             "window; %d tokens of pool capacity; CPU threads: %s", footprint["weight_bytes"] / 2**20,
             opts.resolved_weight_format(), footprint["kv_cache_dtype"], footprint["compressed_per_token"],
             footprint["swa_per_token"], sched.pools.sizes.max_tokens, threads.describe())
    ready.send({"ok": True, "token_capacity": sched.pools.sizes.max_tokens, "footprint": footprint,
                "vocab_size": sched.cfg.vocab_size, "eos_token_id": sched.cfg.eos_token_id,
                "page_size": sched.page_size})
    try:
        SchedulerLoop(sched, recv, send, tok, opts.grammar_compile_timeout, opts.watchdog_timeout).run()
    except Exception:
        log.error("scheduler crashed:\n%s", traceback.format_exc())
        raise
