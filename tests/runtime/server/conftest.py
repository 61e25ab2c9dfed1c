"""A live `banyan serve` on the tiny checkpoint, shared by the server tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

API_KEY = "test-key"
MAX_RUNNING = 4
MAX_QUEUED = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, url: str, proc: subprocess.Popen, log_path) -> None:
        self.url, self.proc, self.log_path = url, proc, log_path

    def http(self, key: str | None = API_KEY, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(model_path, log_path, *extra: str) -> LiveServer:
    port = free_port()
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "banyan.runtime.cli", "serve", str(model_path), "--port", str(port),
           "--max-running-requests", str(MAX_RUNNING), "--max-queued-requests", str(MAX_QUEUED),
           "--kv-cache-gb", "0.06", "--chunked-prefill-size", "256", "--served-model-name", "banyan-tiny",
           "--api-key", API_KEY, *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    saw_503 = False
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            status = httpx.get(url + "/health", timeout=2).status_code
        except httpx.HTTPError:
            status = None
        saw_503 |= status == 503
        if status == 200:
            server = LiveServer(url, proc, log_path)
            server.saw_starting = saw_503
            return server
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def server(tiny_official, tmp_path_factory):
    srv = start_server(tiny_official, tmp_path_factory.mktemp("server") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def wait_idle(server: LiveServer, timeout: float = 20.0) -> dict:
    """Scheduler stats once nothing is running or waiting."""
    with server.http() as http:
        deadline = time.time() + timeout
        while True:
            stats = http.get("/server_info").json()["internal_states"][0]
            if (stats["running"] == 0 and stats["waiting"] == 0) or time.time() > deadline:
                return stats
            time.sleep(0.05)
