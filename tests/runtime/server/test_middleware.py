"""Request ids, the API key and the body limit, on a small app without an engine."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from banyan.runtime.server import middleware
from banyan.runtime.server.errors import install_error_handlers
from banyan.runtime.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestIdMiddleware

KEY = "sk-secret"
LIMIT = 1000


class Body(BaseModel):
    text: str


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/model")
    async def model_route(body: Body):
        return {"length": len(body.text), "request_id": middleware.REQUEST_ID.get()}

    @app.post("/raw")
    async def raw_route(http: Request):
        return {"length": len((await http.json())["text"])}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    app.add_middleware(BodyLimitMiddleware, limit=lambda: LIMIT)
    app.add_middleware(ApiKeyMiddleware, api_key=KEY, open_paths={"/health"})
    app.add_middleware(RequestIdMiddleware)
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def test_request_id_is_echoed_or_generated(client):
    r = client.post("/model", json={"text": "abc"}, headers={**AUTH, "X-Request-Id": "client-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-42"
    assert r.json() == {"length": 3, "request_id": "client-42"}  # the id the routes (and engine requests) see
    generated = client.post("/model", json={"text": "abc"}, headers=AUTH)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    assert client.post("/model", json={"text": "abc"}, headers=AUTH).headers["x-request-id"] != \
        generated.headers["x-request-id"]


def test_api_key_accepts_bearer_and_x_api_key_only(client):
    assert client.post("/model", json={"text": "a"}, headers=AUTH).status_code == 200
    assert client.post("/model", json={"text": "a"}, headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/model", json={"text": "a"}, headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"},
                    {"Authorization": KEY}, {"X-API-Key": KEY[:-1]}):
        r = client.post("/model", json={"text": "a"}, headers={**headers, "X-Request-Id": "denied"})
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["x-request-id"] == "denied"
    assert client.get("/health").status_code == 200  # open without a key
    assert client.options("/model").status_code != 401  # CORS preflights carry no key


def test_api_key_comparison_takes_the_same_path_for_every_key(client, monkeypatch):
    calls: list[tuple[int, int]] = []
    real = middleware.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    for headers in (AUTH, {"Authorization": "Bearer x"}, {"X-API-Key": "y" * 500}, {}):
        calls.clear()
        client.post("/model", json={"text": "a"}, headers=headers)
        # both headers are compared, as fixed-size digests, whatever was sent and whether it matched
        assert calls == [(32, 32), (32, 32)], headers


def test_declared_oversized_body_gets_413_before_it_is_read(client):
    r = client.post("/model", content=b'{"text": "' + b"x" * 2000 + b'"}', headers={**AUTH, "X-Request-Id": "big"})
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == "request_too_large" and str(LIMIT) in error["message"]
    assert r.headers["x-request-id"] == "big"


@pytest.mark.parametrize("path", ["/model", "/raw"])
def test_streamed_oversized_body_gets_413_once_past_the_limit(client, path):
    def chunks():
        yield b'{"text": "'
        for _ in range(10):
            yield b"x" * 300
        yield b'"}'

    r = client.post(path, content=chunks(), headers=AUTH)  # no Content-Length: chunked
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]
    small = client.post(path, content=iter([b'{"text": ', b'"abc"}']), headers=AUTH)
    assert small.status_code == 200 and small.json()["length"] == 3
