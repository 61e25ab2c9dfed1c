"""HTTP plumbing of the server backends: 503s are waited out, failures carry the server's message."""

from __future__ import annotations

import httpx
import pytest

from banyan.frontend.backends import http
from banyan.frontend.errors import BackendError


def client(replies: list[httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return replies.pop(0)

    return httpx.Client(base_url="http://banyan.test", transport=httpx.MockTransport(handle))


def test_busy_server_is_retried_after_its_retry_after(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(http.time, "sleep", waits.append)
    busy = httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"message": "queue full"}})
    seen: list[httpx.Request] = []
    out = http.request_json(client([busy, busy, httpx.Response(200, json={"ok": 1})], seen), "POST", "/generate",
                            {"text": "x"})
    assert out == {"ok": 1} and waits == [2.0, 2.0] and len(seen) == 3
    assert all(r.content == b'{"text":"x"}' for r in seen)


def test_retries_give_up_with_the_servers_message(monkeypatch):
    monkeypatch.setattr(http.time, "sleep", lambda s: None)
    busy = [httpx.Response(503, json={"error": {"message": "queue full"}}) for _ in range(http.RETRIES + 1)]
    with pytest.raises(BackendError, match=r"POST /generate failed \(503\): queue full"):
        http.request_json(client(busy, []), "POST", "/generate", {})


def test_errors_are_not_retried():
    seen: list[httpx.Request] = []
    bad = httpx.Response(400, json={"error": {"message": "max_new_tokens must be >= 0", "type": "invalid"}})
    with pytest.raises(BackendError, match="400.*max_new_tokens must be >= 0"):
        http.request_json(client([bad], seen), "POST", "/generate", {})
    assert len(seen) == 1
    with pytest.raises(BackendError, match="500.*boom"):
        http.request_json(client([httpx.Response(500, text="boom")], []), "GET", "/x")

