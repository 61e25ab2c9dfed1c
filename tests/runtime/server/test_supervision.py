"""A dead engine process takes the server down loudly: `/health` never says ok again, in-flight
requests fail, the log names the process and its exit code, and the server exits non-zero
within 5 s. A killed server leaves no engine process behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import start_server

EXIT_WITHIN_S = 5.0


def gone(pid: int) -> bool:
    """The process has exited: no such process, or a zombie whose threads have all ended (the
    group leader turns zombie while its other threads are still closing files)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status and "\nThreads:\t1\n" in status


def start_stream(server) -> tuple[threading.Thread, list[str], threading.Event]:
    """A long stream on a thread: its SSE lines, and an event set once the first one arrived."""
    lines: list[str] = []
    first = threading.Event()

    def read() -> None:
        body = {"text": "count", "stream": True, "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}
        try:
            with server.http() as http, http.stream("POST", "/generate", json=body) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    first.set()
        except httpx.HTTPError as exc:
            lines.append(f"client error: {exc}")
        first.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, lines, first


def health_until_exit(server, deadline: float) -> list[int | None]:
    """/health statuses (None: no answer) until the server process exits or the deadline passes."""
    seen = []
    while server.proc.poll() is None and time.time() < deadline:
        try:
            seen.append(httpx.get(server.url + "/health", timeout=1).status_code)
        except httpx.HTTPError:
            seen.append(None)
        time.sleep(0.02)
    return seen


@pytest.mark.parametrize("fault", ["kill banyan-scheduler", "kill banyan-detokenizer", "watchdog"])
def test_dead_engine_process_fails_requests_and_exits_nonzero(tiny_official, tmp_path, monkeypatch, fault):
    extra = ()
    if fault == "watchdog":  # every model step sleeps 3 s; the watchdog allows 1 s
        monkeypatch.setenv("BANYAN_TEST_STEP_DELAY_S", "3")
        extra = ("--watchdog-timeout", "1")
    server = start_server(tiny_official, tmp_path / "server.log", *extra)
    try:
        with server.http() as http:
            pids = http.get("/server_info").json()["processes"]
        thread, lines, first = start_stream(server)
        if fault == "watchdog":
            name, code = "banyan-scheduler", 3
            while not gone(pids[name]):  # the watchdog ends the scheduler during the first step
                assert server.proc.poll() is None, "the server exited before its scheduler"
                time.sleep(0.01)
        else:
            name, code = fault.split()[1], -signal.SIGKILL
            assert first.wait(60), "the stream did not start"
            os.kill(pids[name], signal.SIGKILL)
            while not gone(pids[name]):
                time.sleep(0.01)
        died = time.time()
        seen = health_until_exit(server, died + EXIT_WITHIN_S)
        server.proc.wait(timeout=max(0.1, died + EXIT_WITHIN_S - time.time()))
        exited = time.time() - died
        thread.join(timeout=5)
    finally:
        server.stop()
    assert server.proc.returncode == 1 and exited < EXIT_WITHIN_S
    assert 200 not in seen, f"/health answered ok after {name} died: {seen}"
    # the in-flight stream was failed, not left hanging: an error event, or before any event an error body
    errors = [json.loads(line.removeprefix("data: "))["error"]["message"] for line in lines
              if line.startswith(('data: {"error"', '{"error"'))]
    assert errors and f"{name} (pid {pids[name]}) exited with code {code}" in errors[0], lines[-3:]
    log = server.log()
    assert f"engine process {name} (pid {pids[name]}) exited with code {code}; failing in-flight requests" in log
    if fault == "watchdog":
        assert "watchdog: a model step has run for more than 1 s" in log


def test_killed_server_leaves_no_engine_processes(tiny_official, tmp_path):
    server = start_server(tiny_official, tmp_path / "server.log")
    try:
        with server.http() as http:
            pids = http.get("/server_info").json()["processes"]
        assert all(not gone(pid) for pid in pids.values())
        server.proc.kill()
        deadline = time.time() + EXIT_WITHIN_S
        while not all(gone(pid) for pid in pids.values()) and time.time() < deadline:
            time.sleep(0.05)
        left = [name for name, pid in pids.items() if not gone(pid)]
    finally:
        server.stop()
        for pid in pids.values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the server was killed: {left}"
