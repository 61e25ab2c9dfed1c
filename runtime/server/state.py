"""What the routes share: the engine (once started), settings, load accounting, metrics,
and the off-loop pool that request preparation (tokenizing, chat encoding) runs on."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from functools import cached_property, partial
from importlib.metadata import version
from pathlib import Path
from typing import Callable, TypeVar

from fastapi import Request

from ..engine import Engine
from ..options import EngineOptions
from .errors import APIError, invalid
from .metrics import ServerMetrics
from .settings import ServerSettings

T = TypeVar("T")

# The default request body limit: this many bytes per token of context, plus a fixed slack. A
# prompt as token ids takes ~8 bytes a token in JSON, ordinary text ~4 (~9 escaped as \uXXXX).
BODY_BYTES_PER_TOKEN = 32
BODY_SLACK_BYTES = 1 << 20
PREPARE_THREADS = 4


def banyan_version() -> str:
    return version("banyan")


class ServerState:
    def __init__(self, settings: ServerSettings, options: EngineOptions) -> None:
        self.settings = settings
        self.options = options
        self.engine: Engine | None = None
        self.startup_error: str | None = None
        self.draining = False  # SIGTERM: finishing in-flight requests, refusing new ones
        self.fatal: str | None = None  # why the engine died under the server (the server exits non-zero)
        self.started = time.time()
        self.metrics = ServerMetrics(self)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._prepare_pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="banyan-prepare")

    # ---- identity --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.settings.served_model_name or Path(self.options.model_path or "banyan-tiny-v4").name

    @property
    def max_model_len(self) -> int:
        capacity = self.ready_engine().info["token_capacity"]
        return min(self.settings.max_model_len or capacity, capacity)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist. This server serves `{self.model_name}`.",
                           param="model", code="model_not_found")

    # ---- readiness and load ----------------------------------------------------------------
    def unavailable(self) -> str | None:
        """Why the server cannot take requests now (starting, draining, engine dead), or None."""
        if self.engine is None:
            return self.startup_error or "starting"
        if self.engine.dead is not None:
            return f"the engine is not running: {self.engine.dead}"
        if self.draining:
            return "the server is shutting down"
        return None

    def ready_engine(self) -> Engine:
        reason = self.unavailable()
        if reason is not None:
            raise APIError(503, reason, headers={"Retry-After": "5"})
        return self.engine

    def reserve(self, count: int) -> Engine:
        """Reserve room for `count` engine requests (give it back with `release`), or 503
        when the queue is full."""
        engine = self.ready_engine()
        limit = self.options.max_running_requests + self.settings.max_queued_requests
        with self._lock:
            if self._in_flight + count > limit:
                self.metrics.rejected.inc()
                raise APIError(503, f"the server is overloaded ({self._in_flight} requests in flight, "
                               f"limit {limit}); retry later", headers={"Retry-After": "1"})
            self._in_flight += count
        return engine

    def release(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_request_bytes(self) -> int:
        """The request body limit: the setting, else sized for the context length."""
        if self.settings.max_request_bytes is not None:
            return self.settings.max_request_bytes
        if self.unavailable() is not None:  # nothing but a 503 can come of the body anyway
            return BODY_SLACK_BYTES
        return self.max_model_len * BODY_BYTES_PER_TOKEN + BODY_SLACK_BYTES

    # ---- request preparation, off the event loop -------------------------------------------------
    async def offload(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(*args)` (tokenizing, chat encoding, tool grammars) on the preparation pool,
        so that one big request never stalls the event loop and every stream on it."""
        call = partial(copy_context().run, fn, *args)  # keeps the request id for logs
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, call)

    @cached_property
    def _max_token_chars(self) -> int:
        """An upper bound on the characters one token stands for (byte-level BPE: at most one
        character per byte of the token; added tokens: their text)."""
        return max(map(len, self.ready_engine().tokenizer.get_vocab()))

    def tokenize(self, text: str, add_special_tokens: bool = False, param: str = "prompt") -> list[int]:
        """Token ids of a prompt; 400 without tokenizing when the text is too long to fit the
        context whatever its tokens (every token covers at most `_max_token_chars` characters)."""
        limit = self.max_model_len
        at_least = math.ceil(len(text) / self._max_token_chars)
        if at_least > limit:
            raise invalid(f"This model's maximum context length is {limit} tokens, and the prompt has at least "
                          f"{at_least} tokens ({len(text)} characters). Please reduce the prompt.", param)
        return self.ready_engine().tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)


def get_state(request: Request) -> ServerState:
    return request.app.state.banyan
