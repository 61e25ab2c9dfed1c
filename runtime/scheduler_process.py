"""The scheduler process: owns the model, the pools and the radix cache."""

from __future__ import annotations

import logging
import traceback

import torch
import zmq

from ..model.loader import load_model
from ..model.runner import ModelRunner
from ..scheduler.grammar import GrammarCompiler
from ..scheduler.pools import MemoryPools, sizes_from_budget
from ..scheduler.request import Request
from ..scheduler.scheduler import Scheduler, StepOutput
from .options import EngineOptions
from .protocol import (AbortRequest, ControlReply, ControlRequest, ErrorOut, GenerateRequest, RequestMeta,
                       TokenBatch, TokenOut, encode, scheduler_decoder)
from .tokenizer import load_tokenizer

log = logging.getLogger("banyan.scheduler")


def build_scheduler(opts: EngineOptions):
    """The scheduler and the tokenizer it decodes stop strings with."""
    dtype = getattr(torch, opts.dtype)
    model = load_model(opts.model_path, dtype=dtype, device=opts.device, progress=False)
    cfg = model.cfg
    page_size = opts.page_size or cfg.min_page_size
    budget = opts.kv_cache_bytes
    if torch.device(opts.device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(opts.device))
        budget = int(free * opts.mem_fraction)
    sizes = sizes_from_budget(cfg, budget, page_size, opts.max_running_requests, dtype, opts.swa_fraction,
                              opts.chunked_prefill_size)
    pools = MemoryPools(sizes)
    tok = load_tokenizer(opts.model_path)
    sched = Scheduler(ModelRunner(model, sizes.cache_shape()), pools, chunked_prefill_size=opts.chunked_prefill_size,
                      policy=opts.schedule_policy, enable_prefix_cache=opts.enable_prefix_cache,
                      max_running=opts.max_running_requests,
                      decode_text=lambda ids: tok.decode(ids, skip_special_tokens=False))
    return sched, tok


def _token_out(o: StepOutput) -> TokenOut:
    return TokenOut(o.rid, o.token, o.logprob, o.top_logprobs, o.finish.to_dict() if o.finish else None,
                    o.prompt_tokens, o.cached_tokens, o.completion_tokens, o.input_logprobs, o.input_top_logprobs)


class SchedulerLoop:
    def __init__(self, sched: Scheduler, recv: zmq.Socket, send: zmq.Socket, tokenizer) -> None:
        self.sched, self.recv, self.send, self.tokenizer = sched, recv, send, tokenizer
        self._grammars: GrammarCompiler | None = None

    def grammars(self) -> GrammarCompiler:
        """Built on first use: indexing the vocabulary for xgrammar takes a while."""
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.sched.cfg.vocab_size)
        return self._grammars

    def _request(self, msg: GenerateRequest) -> Request:
        msg.params.validate(self.sched.cfg.vocab_size)
        if any(not 0 <= t < self.sched.cfg.vocab_size for t in msg.input_ids):
            raise ValueError("input_ids has a token id outside the vocabulary")
        constraint = self.grammars().new_state(msg.grammar, msg.input_ids) if msg.grammar is not None else None
        return Request(msg.rid, list(msg.input_ids), msg.params, msg.return_logprob, msg.top_logprobs_num,
                       logprob_start_len=msg.logprob_start_len, constraint=constraint)

    def handle(self, msg) -> None:
        if isinstance(msg, GenerateRequest):
            try:
                self.sched.add(self._request(msg))
            except ValueError as exc:
                self.send.send(encode(ErrorOut(msg.rid, str(exc))))
                return
            p = msg.params
            self.send.send(encode(RequestMeta(msg.rid, list(p.stop), p.skip_special_tokens, list(p.stop_regex))))
        elif isinstance(msg, AbortRequest):
            self.sched.abort(msg.rid)
        elif isinstance(msg, ControlRequest):
            if msg.action == "flush_cache":
                self.send.send(encode(ControlReply(msg.req_id, self.sched.flush_cache())))
            elif msg.action == "stats":
                self.send.send(encode(ControlReply(msg.req_id, True, self.sched.usage())))
            else:
                self.send.send(encode(ControlReply(msg.req_id, False, {"error": f"unknown action {msg.action}"})))

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.recv, zmq.POLLIN)
        while True:
            timeout = 0 if self.sched.has_work() else 100
            while dict(poller.poll(timeout)).get(self.recv):
                self.handle(scheduler_decoder.decode(self.recv.recv()))
                timeout = 0
            if self.sched.has_work():
                outs = self.sched.step()
                if outs:
                    self.send.send(encode(TokenBatch([_token_out(o) for o in outs])))


def run_scheduler_process(opts: EngineOptions, in_addr: str, out_addr: str, ready) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx = zmq.Context()
    recv = ctx.socket(zmq.PULL)
    recv.bind(in_addr)
    send = ctx.socket(zmq.PUSH)
    send.connect(out_addr)
    try:
        sched, tok = build_scheduler(opts)
    except Exception as exc:  # report start-up failures to the parent instead of hanging it
        ready.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    ready.send({"ok": True, "token_capacity": sched.pools.sizes.max_tokens,
                "vocab_size": sched.cfg.vocab_size, "eos_token_id": sched.cfg.eos_token_id,
                "page_size": sched.page_size})
    try:
        SchedulerLoop(sched, recv, send, tok).run()
    except Exception:
        log.error("scheduler crashed:\n%s", traceback.format_exc())
        raise
