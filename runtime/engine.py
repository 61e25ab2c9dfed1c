"""`Engine`: the scheduler and detokenizer processes without HTTP.

    engine = Engine()                      # embedded tiny model
    out = engine.generate(prompt="Hello", sampling_params={"max_new_tokens": 16})
    for chunk in engine.generate(prompt="Hello", stream=True): ...
    engine.shutdown()

The calling process tokenizes and keeps one queue per request; a receiver thread reads
the detokenizer's messages and routes them. The same thread watches the child processes:
if one dies, every pending and later call fails with `EngineDeadError` instead of hanging,
and `on_death` is told which process exited and with what code. A child exits by itself
when this process dies, so a killed server leaves no orphans.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import queue
import shutil
import socket
import tempfile
import threading
import uuid
import zlib
from array import array
from multiprocessing.connection import wait
from typing import Any, AsyncIterator, Callable, Iterator

import msgspec
import zmq

from .detokenizer_process import run_detokenizer_process
from .options import EngineOptions
from .protocol import (AbortRequest, ControlReply, ControlRequest, ErrorOut, GenerateRequest, TextBatch, TextOut,
                       encode, engine_decoder)
from .rank_worker import run_rank_worker
from .scheduler_process import run_scheduler_process
from .tokenizer import load_tokenizer
from ..scheduler.grammar import GrammarSpec
from ..scheduler.sampling_params import SamplingParams

_END = object()


class EngineDeadError(RuntimeError):
    """A child process of the engine exited; the engine cannot serve any more requests."""


class RequestError(ValueError):
    """The scheduler rejected a request (bad parameters or too long)."""


class _Pending:
    """Collects one request's messages; `put` runs on the receiver thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.q: queue.Queue | asyncio.Queue = asyncio.Queue() if loop else queue.Queue()

    def put(self, item: Any) -> None:
        _deliver([(self, [item])])


def _deliver(deliveries: list[tuple[_Pending, list]]) -> None:
    """Put items on their queues, waking each asyncio loop once for all of its requests
    (a step of a batch of streams is one wake-up, not one per request and item)."""
    per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, list]]] = {}
    for pending, items in deliveries:
        if pending.loop is None:
            for item in items:
                pending.q.put(item)
        else:
            per_loop.setdefault(pending.loop, []).append((pending.q, items))
    for loop, batch in per_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the loop is closed: its callers are gone (an abandoned asyncio.run)
            pass


def _put_all(batch: list[tuple[asyncio.Queue, list]]) -> None:
    for q, items in batch:
        for item in items:
            q.put_nowait(item)


def _merge(outs: list[TextOut]) -> dict:
    last = outs[-1]
    inputs = next((o for o in outs if o.input_logprobs), last)
    return {
        "text": "".join(o.text for o in outs),
        "output_ids": [t for o in outs for t in o.token_ids],
        "meta_info": _meta(last, [lp for o in outs for lp in o.logprobs],
                           [tp for o in outs for tp in o.top_logprobs], inputs),
    }


def _meta(o: TextOut, logprobs: list, top_logprobs: list, inputs: TextOut) -> dict:
    """`meta_info`: token counts, the finish reason and, when asked for, logprobs as floats
    (`output_token_logprobs`, `input_token_logprobs`, None for the first prompt token) and
    top alternatives as `(token_id, logprob)` lists."""
    meta = {"id": o.rid, "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
            "cached_tokens": o.cached_tokens, "finish_reason": o.finish}
    if logprobs and logprobs[0] is not None:
        meta["output_token_logprobs"] = logprobs
        meta["output_top_logprobs"] = top_logprobs
    if inputs.input_logprobs:
        meta["input_token_logprobs"] = list(inputs.input_logprobs)
        meta["input_top_logprobs"] = list(inputs.input_top_logprobs)
    if o.spec is not None:
        meta.update(o.spec.meta_info(o.completion_tokens))
    return meta


def _chunk(o: TextOut) -> dict:
    return {"text": o.text, "output_ids": list(o.token_ids), "meta_info": _meta(o, o.logprobs, o.top_logprobs, o)}


def _sum_stats(parts: list[dict]) -> dict:
    """Data-parallel ranks' scheduler stats as one: numbers summed, lists summed position by position."""
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                acc = out.setdefault(key, [])
                acc += [0] * (len(value) - len(acc))
                out[key] = [a + b for a, b in zip(acc, value + [0] * (len(acc) - len(value)))]
            else:
                out[key] = out.get(key, 0) + value
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_with_parent() -> None:
    mp.parent_process().join()  # returns once the parent's end of the spawn pipe closes
    os._exit(1)


def _child_main(target: Callable[..., None], *args: Any) -> None:
    """A child process's entry: run `target`, exiting as soon as the parent process dies."""
    threading.Thread(target=_exit_with_parent, daemon=True, name="banyan-parent-watch").start()
    target(*args)


class Engine:
    def __init__(self, model_path: str | None = None, on_death: Callable[[str], None] | None = None,
                 **options: Any) -> None:
        """`on_death(reason)` runs once, on whichever thread first sees a child process exit unasked
        (the receiver, or a caller of `dead`)."""
        from ..model.default import default_model_dir

        self.options = EngineOptions(model_path=str(model_path or default_model_dir()), **options)
        # children inherit it: torch's spin-waiting OpenMP threads stall whenever another process
        # wakes on their cores (streamed decode 60-557 ms vs 17-19 ms per token at load ~4)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.options.validate()
        if self.options.node_rank != 0:
            raise ValueError("an Engine runs node 0; other nodes run `banyan serve --node-rank N` (headless)")
        if self.options.world_size > 1 and self.options.dist_init_addr is None:
            self.options = msgspec.structs.replace(self.options, dist_init_addr=f"127.0.0.1:{_free_port()}")
        self.tokenizer = load_tokenizer(self.options.model_path)
        self._ipc_dir = tempfile.mkdtemp(prefix="banyan-ipc-")
        dp = self.options.dp_size  # data-parallel attention: one scheduler per rank, "sched", "sched1", ...
        names = ("sched", "detok", "engine", *(f"sched{r}" for r in range(1, dp)))
        addr = {name: f"ipc://{os.path.join(self._ipc_dir, name)}" for name in names}
        self._ctx = zmq.Context()
        self._recv = self._ctx.socket(zmq.PULL)
        self._recv.bind(addr["engine"])
        self._send = self._ctx.socket(zmq.PUSH)
        self._send.connect(addr["sched"])
        self._sends = [self._send]  # per data-parallel rank
        for r in range(1, dp):
            self._sends.append(self._ctx.socket(zmq.PUSH))
            self._sends[-1].connect(addr[f"sched{r}"])
        self._dp_rank: dict[str, int] = {}  # request -> the data-parallel rank serving it
        self._send_lock = threading.Lock()
        spawn = mp.get_context("spawn")
        ready_recv, ready_send = spawn.Pipe(duplex=False)
        dp_ready = [spawn.Pipe(duplex=False) for _ in range(1, dp)]
        self._procs = [
            spawn.Process(target=_child_main, args=(run_scheduler_process, self.options, addr["sched"],
                                                    addr["detok"], ready_send),
                          daemon=True, name="banyan-scheduler"),
            spawn.Process(target=_child_main, args=(run_detokenizer_process, self.options.model_path,
                                                    addr["detok"], addr["engine"]),
                          daemon=True, name="banyan-detokenizer"),
            *(spawn.Process(target=_child_main, args=(run_scheduler_process, self.options, addr[f"sched{r}"],
                                                      addr["detok"], dp_ready[r - 1][1], r),
                            daemon=True, name=f"banyan-scheduler-{r}") for r in range(1, dp)),
            *(spawn.Process(target=_child_main, args=(run_rank_worker, self.options, rank), daemon=True,
                            name=f"banyan-rank-{rank}") for rank in (self.options.local_ranks[1:] if dp == 1 else ())),
        ]
        self._on_death = on_death
        self._reap_lock = threading.Lock()
        for p in self._procs:
            p.start()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._closed = False
        self.info = self._wait_ready(ready_recv)
        for conn, _ in dp_ready:
            self.info["token_capacity"] += self._wait_ready(conn)["token_capacity"]
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._receive_loop, daemon=True, name="banyan-engine-recv")
        self._thread.start()

    # ---- lifecycle ------------------------------------------------------------------------------
    def _wait_ready(self, conn) -> dict:
        waited = 0.0
        while not conn.poll(0.2):
            waited += 0.2
            dead = [p.name for p in self._procs if not p.is_alive()]
            if dead or waited > self.options.startup_timeout:
                self.shutdown()
                raise EngineDeadError(f"engine failed to start: {', '.join(dead) or 'timeout'}")
        info = conn.recv()
        if not info.get("ok"):
            self.shutdown()
            raise EngineDeadError(f"scheduler failed to start: {info.get('error')}")
        return info

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in reversed(self._procs):  # other ranks before rank 0, so that none sees a peer vanish
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
        self._fail_all("engine shut down")
        self._ctx.destroy(linger=0)
        shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def pids(self) -> dict[str, int]:
        """The child processes by name (for operators, and for tests that kill one)."""
        return {p.name: p.pid for p in self._procs}

    @property
    def dead(self) -> str | None:
        """Why the engine stopped serving (a child exited, or `shutdown`), or None while it serves.
        It looks at the children itself, so it is right from the moment one exits."""
        if self._dead is None and not self._closed:
            self._reap(wait([p.sentinel for p in self._procs], timeout=0))
        return self._dead

    def _reap(self, ready) -> bool:
        """Whether a child whose sentinel is in `ready` exited; if so, reap it and fail the engine
        (once, whichever thread sees it first)."""
        exited = [p for p in self._procs if p.sentinel in ready]
        if not exited:
            return False
        with self._reap_lock:
            if self._dead is None:
                for p in exited:
                    p.join()  # reaps it, so that its exit code is known
                self._die(self._exited())
        return True

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = reason
            pending, self._pending = self._pending, {}
        for p in pending.values():
            p.put(EngineDeadError(self._dead))

    def _die(self, reason: str) -> None:
        """A child exited or the receiver failed: fail every call, then tell `on_death`."""
        if self._closed:  # shutdown() stops the children itself
            return
        self._fail_all(reason)
        if self._on_death is not None:
            self._on_death(reason)

    def _exited(self) -> str:
        return "; ".join(f"engine process {p.name} (pid {p.pid}) exited with code {p.exitcode}"
                         for p in self._procs if not p.is_alive())

    def _receive_loop(self) -> None:
        try:
            self._route_messages()
        except Exception as exc:  # a receiver that stops silently would hang every caller
            self._die(f"the engine's receiver failed: {type(exc).__name__}: {exc}")

    def _route_messages(self) -> None:
        poller = zmq.Poller()
        poller.register(self._recv, zmq.POLLIN)
        for p in self._procs:  # a process's sentinel becomes readable the moment it exits
            poller.register(p.sentinel, zmq.POLLIN)
        while not self._closed:
            try:
                events = dict(poller.poll(200))
            except zmq.ZMQError:
                return
            if self._reap(events):
                return
            if self._recv not in events:
                continue
            msg = engine_decoder.decode(self._recv.recv())
            self._route(msg.items if isinstance(msg, TextBatch) else [msg])

    def _route(self, msgs: list) -> None:
        """Hand each message (and `_END` after a request's last) to its caller's queue."""
        deliveries = []
        with self._lock:
            for msg in msgs:
                key = msg.req_id if isinstance(msg, ControlReply) else msg.rid
                pending = self._pending.get(key)
                done = isinstance(msg, (ControlReply, ErrorOut)) or (isinstance(msg, TextOut) and msg.finish)
                if done:
                    self._pending.pop(key, None)
                    self._dp_rank.pop(key, None)
                if pending is not None:
                    deliveries.append((pending, [msg, _END] if done else [msg]))
        _deliver(deliveries)

    # ---- requests ---------------------------------------------------------------------------------
    def _rank_for(self, ids: list[int]) -> int:
        """Data-parallel attention: the rank for a new request, chosen by its first page of tokens,
        so that requests sharing a prefix meet in one rank's prefix cache."""
        first_page = array("q", ids[:self.info["page_size"]]).tobytes()
        return zlib.crc32(first_page) % len(self._sends)

    def _submit(self, msg: msgspec.Struct, key: str, loop: asyncio.AbstractEventLoop | None = None,
                rank: int = 0) -> _Pending:
        """Send `msg` to the scheduler of data-parallel rank `rank` (a new request: the rank
        `_rank_for` picks)."""
        pending = _Pending(loop)
        with self._lock:
            if self._dead is not None:
                raise EngineDeadError(self._dead)
            if key in self._pending:
                raise RequestError(f"request id {key!r} is already in use")
            self._pending[key] = pending
            if isinstance(msg, GenerateRequest) and len(self._sends) > 1:
                rank = self._dp_rank[key] = self._rank_for(msg.input_ids)
        with self._send_lock:
            self._sends[rank].send(encode(msg))
        return pending

    def _prompt_ids(self, prompt: str | None, input_ids: list[int] | None) -> list[int]:
        if (prompt is None) == (input_ids is None):
            raise ValueError("pass exactly one of prompt or input_ids")
        if input_ids is None:
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        try:
            ids = msgspec.convert(input_ids, list[int])
        except msgspec.ValidationError:
            raise ValueError("input_ids must be a list of integer token ids") from None
        vocab = self.info["vocab_size"]
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(f"input_ids has a token id outside the vocabulary (0..{vocab - 1})")
        return ids

    def _requests(self, prompt: str | None, input_ids: list[int] | None, sampling_params: dict | None,
                  return_logprob: bool, top_logprobs_num: int, logprob_start_len: int,
                  grammar: GrammarSpec | None, rid: str | None) -> list[GenerateRequest]:
        ids = self._prompt_ids(prompt, input_ids)
        try:
            params = msgspec.convert(sampling_params or {}, SamplingParams, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid sampling_params: {exc}") from None
        params.validate(self.tokenizer.vocab_size + len(self.tokenizer.get_added_vocab()))
        base = rid or uuid.uuid4().hex
        names = [rid] if rid and params.n == 1 else [f"{base}-{i}" for i in range(params.n)]
        reqs = []
        for i, name in enumerate(names):
            p = msgspec.structs.replace(params, n=1, seed=None if params.seed is None else params.seed + i)
            reqs.append(GenerateRequest(name, ids, p, return_logprob, top_logprobs_num,
                                        logprob_start_len if return_logprob else -1, grammar))
        return reqs

    def abort(self, rid: str) -> None:
        if self._dead is not None:  # nothing left to abort, and no scheduler to take the message
            return
        with self._send_lock:
            self._sends[self._dp_rank.get(rid, 0)].send(encode(AbortRequest(rid)))

    @staticmethod
    def _check(msg: Any) -> Any:
        if isinstance(msg, EngineDeadError):
            raise msg
        if isinstance(msg, ErrorOut):
            raise RequestError(msg.message)
        return msg

    def generate(self, prompt: str | None = None, input_ids: list[int] | None = None,
                 sampling_params: dict | None = None, return_logprob: bool = False, top_logprobs_num: int = 0,
                 stream: bool = False, logprob_start_len: int = -1, grammar: GrammarSpec | None = None,
                 rid: str | None = None) -> dict | list[dict] | Iterator[dict]:
        """Blocking generation. With `n > 1` returns a list; with `stream` an iterator of chunks.

        `logprob_start_len >= 0` (with `return_logprob`) also reports the logprobs of the prompt
        tokens from that position on; `grammar` constrains the output (regex, JSON schema, ...).
        `rid` names the engine request (with `n > 1`, choice i is `{rid}-{i}`); random by default."""
        reqs = self._requests(prompt, input_ids, sampling_params, return_logprob, top_logprobs_num,
                              logprob_start_len, grammar, rid)
        if stream:
            if len(reqs) != 1:
                raise ValueError("streaming supports n == 1")
            return self._stream(reqs[0])
        pendings = [(r.rid, self._submit(r, r.rid)) for r in reqs]
        results = []
        for rid, pending in pendings:
            outs = []
            try:
                while (item := pending.q.get()) is not _END:
                    outs.append(self._check(item))
            except BaseException:
                self.abort(rid)
                raise
            results.append(_merge(outs))
        return results[0] if len(results) == 1 else results

    def _stream(self, req: GenerateRequest) -> Iterator[dict]:
        pending = self._submit(req, req.rid)
        finished = False
        try:
            while (item := pending.q.get()) is not _END:
                chunk, finished = self._stream_chunk(item)
                yield chunk
        finally:
            if not finished:
                self.abort(req.rid)

    def _stream_chunk(self, item: Any) -> tuple[dict, bool]:
        """A streamed message as a chunk, and whether it ends the request."""
        chunk = _chunk(self._check(item))
        return chunk, chunk["meta_info"]["finish_reason"] is not None

    async def async_generate(self, prompt: str | None = None, input_ids: list[int] | None = None,
                             sampling_params: dict | None = None, return_logprob: bool = False,
                             top_logprobs_num: int = 0, stream: bool = False, logprob_start_len: int = -1,
                             grammar: GrammarSpec | None = None,
                             rid: str | None = None) -> dict | list[dict] | AsyncIterator[dict]:
        reqs = self._requests(prompt, input_ids, sampling_params, return_logprob, top_logprobs_num,
                              logprob_start_len, grammar, rid)
        loop = asyncio.get_running_loop()
        if stream:
            if len(reqs) != 1:
                raise ValueError("streaming supports n == 1")
            return self._astream(reqs[0], loop)
        pendings = [(r.rid, self._submit(r, r.rid, loop)) for r in reqs]
        results = []
        for rid, pending in pendings:
            outs = []
            try:
                while (item := await pending.q.get()) is not _END:
                    outs.append(self._check(item))
            except BaseException:  # includes cancellation when a client disconnects
                self.abort(rid)
                raise
            results.append(_merge(outs))
        return results[0] if len(results) == 1 else results

    async def _astream(self, req: GenerateRequest, loop: asyncio.AbstractEventLoop) -> AsyncIterator[dict]:
        pending = self._submit(req, req.rid, loop)
        finished = False
        try:
            while (item := await pending.q.get()) is not _END:
                chunk, finished = self._stream_chunk(item)
                yield chunk
        finally:
            if not finished:
                self.abort(req.rid)

    def _control(self, action: str, timeout: float = 60.0) -> ControlReply:
        """Ask every data-parallel rank's scheduler; one reply (ok if all are, data summed)."""
        req_id = f"ctl-{next(self._ids)}"
        keys = [req_id] + [f"{req_id}/{r}" for r in range(1, len(self._sends))]
        pendings = [self._submit(ControlRequest(key, action), key, rank=r) for r, key in enumerate(keys)]
        replies = []
        for pending in pendings:
            try:
                replies.append(self._check(pending.q.get(timeout=timeout)))
            except queue.Empty:
                raise EngineDeadError(f"no answer to {action} within {timeout}s") from None
        if len(replies) == 1:
            return replies[0]
        return ControlReply(req_id, all(r.ok for r in replies), _sum_stats([r.data for r in replies]))

    def flush_cache(self) -> bool:
        """Drop the prefix cache; False while requests are in flight."""
        return self._control("flush_cache").ok

    def stats(self) -> dict:
        """Pool usage, cache hits and queue lengths."""
        return dict(self._control("stats").data)
