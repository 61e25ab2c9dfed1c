"""Running engine requests for a route: admission, metrics, client disconnects.

Each choice of a request is one engine request (`n` is expanded here, each choice with
its own seed), so streaming and non-streaming share one path. Engine requests are named
after the HTTP request's `x-request-id`: `{id}`, or `{id}-{i}` for the choices of a multi-choice
request, so that log lines of the scheduler and the server can be matched to a client's request.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import anyio
from fastapi import Request

from ..engine import Engine
from .errors import invalid
from .middleware import REQUEST_ID
from .state import ServerState

DISCONNECT_POLL_S = 0.2


class ClientGone(Exception):
    """The HTTP client went away; its engine requests were aborted."""


@dataclass
class Call:
    """The engine arguments of one choice."""

    input_ids: list[int]
    sampling_params: dict
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1
    grammar: Any = None


def expand(call: Call, n: int) -> list[Call]:
    """`n` choices of one call; with a seed, choice i uses seed + i."""
    out = []
    for i in range(n):
        params = dict(call.sampling_params, n=1)
        if params.get("seed") is not None:
            params["seed"] += i
        out.append(Call(call.input_ids, params, call.return_logprob, call.top_logprobs_num,
                        call.logprob_start_len, call.grammar))
    return out


@dataclass
class _Timing:
    started: float = field(default_factory=time.time)
    first_token: float | None = None


def _kwargs(call: Call, index: int, count: int) -> dict:
    rid = REQUEST_ID.get() or None
    if rid is not None and count > 1:
        rid = f"{rid}-{index}"
    return {"input_ids": call.input_ids, "sampling_params": call.sampling_params,
            "return_logprob": call.return_logprob, "top_logprobs_num": call.top_logprobs_num,
            "logprob_start_len": call.logprob_start_len, "grammar": call.grammar, "rid": rid}


async def _one(state: ServerState, engine: Engine, call: Call, index: int, count: int) -> dict:
    timing = _Timing()
    try:
        out = await engine.async_generate(**_kwargs(call, index, count))
    except ValueError as exc:  # bad parameters or a request the scheduler refused
        raise invalid(str(exc)) from None
    state.metrics.observe(out["meta_info"], timing.started, None, time.time())
    return out


async def generate(state: ServerState, http: Request, calls: list[Call]) -> list[dict]:
    """Run every call to the end; abort them all if the client disconnects."""
    engine = state.reserve(len(calls))
    tasks = [asyncio.ensure_future(_one(state, engine, c, i, len(calls))) for i, c in enumerate(calls)]
    try:
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=DISCONNECT_POLL_S, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.done() and t.exception() for t in tasks):
                break
            if pending and await http.is_disconnected():
                raise ClientGone()
        return [t.result() for t in tasks]
    finally:
        unfinished = sum(not t.done() for t in tasks)
        for t in tasks:
            t.cancel()  # cancelling an unfinished engine request aborts it in the scheduler
        await asyncio.gather(*tasks, return_exceptions=True)
        state.metrics.count_aborted(unfinished)
        state.release(len(calls))


async def stream(state: ServerState, calls: list[Call]) -> AsyncIterator[tuple[int, dict]]:
    """Engine chunks of all choices as `(choice index, chunk)`, interleaved as they come.

    Admission happens at the first iteration: the caller must start iterating before it
    sends response headers, so that a full queue still yields a 503."""
    engine = state.reserve(len(calls))
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, call: Call) -> None:
        timing = _Timing()
        try:
            async for chunk in await engine.async_generate(stream=True, **_kwargs(call, index, len(calls))):
                if timing.first_token is None and chunk["output_ids"]:
                    timing.first_token = time.time()
                if chunk["meta_info"]["finish_reason"] is not None:
                    state.metrics.observe(chunk["meta_info"], timing.started, timing.first_token, time.time())
                await queue.put((index, chunk))
        except Exception as exc:  # surfaced to the consumer below
            await queue.put((index, exc))
        finally:
            await queue.put((index, done))

    tasks = [asyncio.ensure_future(pump(i, c)) for i, c in enumerate(calls)]
    finished: set[int] = set()
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, ValueError):
                raise invalid(str(item))
            elif isinstance(item, Exception):
                raise item
            else:
                if item["meta_info"]["finish_reason"] is not None:
                    finished.add(index)
                yield index, item
    finally:
        for t in tasks:
            t.cancel()
        # a client disconnect cancels the response task, and anyio cancels every await in it again:
        # shielded, the cleanup runs to the end and the requests' room is given back
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
        state.metrics.count_aborted(len(calls) - len(finished))
        state.release(len(calls))
