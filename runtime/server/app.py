"""The FastAPI application: routes, error handlers, middleware, engine start-up.

The engine starts on a background thread once the app is up, so `/health` answers 503
(and every model route 503 with Retry-After) until the model is loaded. If an engine process
dies later, `/health` turns 503 at once and `on_fatal` makes the server exit.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import Callable

import msgspec
from fastapi import FastAPI

from ..engine import Engine
from ..options import EngineOptions
from . import chat, completions, info, messages, native, responses
from .errors import install_error_handlers, install_openapi
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from .settings import ServerSettings
from .state import ServerState, banyan_version

log = logging.getLogger("banyan.server")

OPEN_PATHS = {"/health", "/metrics", "/version"}


def start_engine(state: ServerState, on_ready: Callable[[], None], on_fatal: Callable[[], None]) -> None:
    """Build the engine (loads the model, starts the scheduler and detokenizer processes)."""
    opts = msgspec.structs.asdict(state.options)
    try:
        state.engine = Engine(opts.pop("model_path"), on_death=partial(_engine_died, state, on_fatal), **opts)
    except Exception as exc:
        state.startup_error = f"the engine failed to start: {exc}"
        log.error(state.startup_error)
        on_fatal()
        return
    on_ready()


def _engine_died(state: ServerState, on_fatal: Callable[[], None], reason: str) -> None:
    state.fatal = reason
    log.error("%s; failing in-flight requests and exiting", reason)
    on_fatal()


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
        state.close()

    app = FastAPI(title="Banyan", version=banyan_version(), lifespan=lifespan)
    app.state.banyan = state
    install_error_handlers(app)
    for module in (chat, completions, responses, messages, native, info):
        app.include_router(module.router)
    install_openapi(app)
    app.add_middleware(BodyLimitMiddleware, limit=lambda: state.max_request_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, open_paths=OPEN_PATHS)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response carries the id, 401 and 413 too
    return app
