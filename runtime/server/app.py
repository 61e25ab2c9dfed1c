"""The FastAPI application: routes, error handlers, API-key check, engine start-up.

The engine starts on a background thread once the app is up, so `/health` answers 503
(and every model route 503 with Retry-After) until the model is loaded.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import Callable

import msgspec
from fastapi import FastAPI

from ..engine import Engine
from ..options import EngineOptions
from . import chat, completions, info, messages, native, responses
from .errors import APIError, error_response, install_error_handlers, install_openapi
from .settings import ServerSettings
from .state import ServerState, banyan_version

log = logging.getLogger("banyan.server")

OPEN_PATHS = {"/health", "/metrics", "/version"}


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer KEY` (or `X-API-Key`) on every route but OPEN_PATHS."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.api_key = app, api_key

    def _authorized(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        bearer = headers.get(b"authorization", b"").decode("latin-1")
        return bearer == f"Bearer {self.api_key}" or headers.get(b"x-api-key", b"").decode("latin-1") == self.api_key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            response = error_response(APIError(401, "Invalid or missing API key; send 'Authorization: Bearer KEY'.",
                                               code="invalid_api_key"))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def start_engine(state: ServerState, on_ready: Callable[[], None], on_fatal: Callable[[], None]) -> None:
    """Build the engine (loads the model, starts the scheduler and detokenizer processes)."""
    opts = msgspec.structs.asdict(state.options)
    try:
        state.engine = Engine(opts.pop("model_path"), **opts)
    except Exception as exc:
        state.startup_error = f"the engine failed to start: {exc}"
        log.error(state.startup_error)
        on_fatal()
        return
    on_ready()


def create_app(settings: ServerSettings, options: EngineOptions,
               on_ready: Callable[[], None] = lambda: None, on_fatal: Callable[[], None] = lambda: None) -> FastAPI:
    state = ServerState(settings, options)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        threading.Thread(target=start_engine, args=(state, on_ready, on_fatal), daemon=True,
                         name="banyan-engine-start").start()
        yield
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="Banyan", version=banyan_version(), lifespan=lifespan)
    app.state.banyan = state
    install_error_handlers(app)
    for module in (chat, completions, responses, messages, native, info):
        app.include_router(module.router)
    install_openapi(app)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    return app
