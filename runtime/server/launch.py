"""`banyan serve`: run the app under uvicorn and print a ready line once the model is up.

Exit codes: 0 after a signal-initiated drain, 1 when the engine failed to start or one of
its processes died (the watchdog included), so that a supervisor restarts the server.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import NoReturn

import uvicorn

from ..options import EngineOptions
from .app import create_app
from .settings import ServerSettings
from .state import ServerState

log = logging.getLogger("banyan.server")

CONNECTION_CLOSE_TIMEOUT_S = 2.0  # after the drain: for the last responses to finish writing
DRAIN_POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    """uvicorn, except that SIGTERM / SIGINT drain first (SGLang's and vLLM's convention): `/health`
    and new requests answer 503 while in-flight requests get up to `--shutdown-timeout` seconds;
    the rest are then aborted and the server exits 0. A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame) -> None:
        if self.state.draining:
            self.should_exit = self.force_exit = True
            return
        self.state.draining = True
        threading.Thread(target=self._drain, daemon=True, name="banyan-drain").start()

    def _drain(self) -> None:
        state = self.state
        timeout = state.settings.shutdown_timeout
        log.info("shutting down: %d requests in flight get up to %g s to finish", state.in_flight, timeout)
        deadline = time.monotonic() + timeout
        while state.in_flight and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
        if state.in_flight and state.engine is not None:
            log.warning("aborting %d requests still running after --shutdown-timeout %g s", state.in_flight, timeout)
            state.engine.shutdown()  # fails them: streams end with an error event, the others get 503
        self.should_exit = True


def serve(options: EngineOptions, settings: ServerSettings) -> NoReturn:
    """Serve until a signal or a fatal engine error; ends the process with the exit code."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server: DrainingServer | None = None

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
    state: ServerState = app.state.banyan
    server = DrainingServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                           timeout_graceful_shutdown=CONNECTION_CLOSE_TIMEOUT_S), state)
    server.run()
    code = 1 if state.startup_error or state.fatal else 0
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # The engine is shut down; end now rather than wait at exit for a preparation thread still
    # tokenizing a prompt whose request is gone.
    os._exit(code)
