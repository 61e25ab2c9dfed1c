"""What the routes share: the engine (once started), settings, load accounting, metrics."""

from __future__ import annotations

import threading
from importlib.metadata import version
import time
from pathlib import Path
from fastapi import Request

from ..engine import Engine
from ..options import EngineOptions
from .errors import APIError
from .metrics import ServerMetrics
from .settings import ServerSettings


def banyan_version() -> str:
    return version("banyan")


class ServerState:
    def __init__(self, settings: ServerSettings, options: EngineOptions) -> None:
        self.settings = settings
        self.options = options
        self.engine: Engine | None = None
        self.startup_error: str | None = None
        self.started = time.time()
        self.metrics = ServerMetrics(self)
        self._in_flight = 0
        self._lock = threading.Lock()

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
    def ready_engine(self) -> Engine:
        if self.engine is None:
            reason = self.startup_error or "the server is starting up"
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


def get_state(request: Request) -> ServerState:
    return request.app.state.banyan
