"""`banyan serve`: run the app under uvicorn and print a ready line once the model is up."""

from __future__ import annotations

import logging
import time

import uvicorn

from ..options import EngineOptions
from .app import create_app
from .settings import ServerSettings

log = logging.getLogger("banyan.server")


def serve(options: EngineOptions, settings: ServerSettings) -> int:
    """Serve until interrupted; returns the process exit code (1 if the engine failed to start)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server: uvicorn.Server | None = None

    def on_ready() -> None:
        while server is not None and not server.started and not server.should_exit:
            time.sleep(0.05)
        state = app.state.banyan
        log.info("Banyan is ready: serving %s at http://%s:%d (OpenAI API under /v1, max_model_len %d)",
                 state.model_name, settings.host, settings.port, state.max_model_len)

    def on_fatal() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, options, on_ready, on_fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level, timeout_graceful_shutdown=5))
    server.run()
    return 1 if app.state.banyan.startup_error else 0
