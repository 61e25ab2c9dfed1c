"""A watchdog for the scheduler's model steps.

A forward pass that never returns (a hung kernel, a deadlocked collective) would leave the
server up but silent. The watchdog thread exits the process instead, after logging why and
where it was stuck; the engine sees the child exit and the server exits non-zero, so that a
supervisor restarts it (SGLang's `--watchdog-timeout` does the same).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("banyan.scheduler")

WATCHDOG_EXIT_CODE = 3


class Watchdog:
    def __init__(self, timeout: float, describe=lambda: "") -> None:
        """`describe()` adds context to the log line (e.g. the requests in the stuck step)."""
        self.timeout = timeout
        self._describe = describe
        self._since: float | None = None
        threading.Thread(target=self._watch, daemon=True, name="banyan-watchdog").start()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Time one model step."""
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(self.timeout / 4, 1.0))
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                log.critical("watchdog: a model step has run for more than %g s (--watchdog-timeout); exiting%s",
                             self.timeout, self._describe())
                faulthandler.dump_traceback()  # every thread's stack: where the step is stuck
                os._exit(WATCHDOG_EXIT_CODE)
