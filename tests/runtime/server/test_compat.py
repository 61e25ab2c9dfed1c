"""What other clients ask of a live server: `/model_info` (sglang-router), an OpenAPI schema that
documents the 400s the server answers, reasoning tokens in usage, and quiet logs."""

from __future__ import annotations

import json
import time

import httpx
import pytest

MSGS = [{"role": "user", "content": "Say something."}]
THINK_PROMPT = "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>"


def test_model_info_alias(server):
    with server.http() as http:
        info = http.get("/model_info")
        assert info.status_code == 200 and info.json() == http.get("/get_model_info").json()
    assert info.json()["model_path"] and info.json()["is_generation"] is True


def test_openapi_documents_400_error_bodies_and_no_422(server):
    with server.http() as http:
        schema = http.get("/openapi.json").json()
    assert "422" not in json.dumps(schema) and "HTTPValidationError" not in schema["components"]["schemas"]
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            error = "AnthropicErrorResponse" if path.startswith("/v1/messages") else "ErrorResponse"
            ref = {"$ref": f"#/components/schemas/{error}"}
            assert op["responses"]["default"]["content"]["application/json"]["schema"] == ref, (path, method)
            if method == "post":
                assert op["responses"]["400"]["content"]["application/json"]["schema"] == ref, (path, method)
    body = schema["components"]["schemas"]["ErrorDetail"]
    assert set(body["properties"]) == {"message", "type", "param", "code"}
    # what the schema documents is what a bad request gets
    with server.http() as http:
        r = http.post("/v1/chat/completions", json={"messages": [], "max_tokens": -1})
    assert r.status_code == 400 and set(r.json()["error"]) == set(body["properties"])


def test_reasoning_tokens_in_usage(client):
    think = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=3, reasoning_effort="high")
    assert think.usage.completion_tokens_details.reasoning_tokens == think.usage.completion_tokens == 3
    closed = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=3, reasoning_effort="high",
                                            logit_bias={"128822": 100})  # </think> at once: no reasoning
    assert closed.usage.completion_tokens_details.reasoning_tokens == 0
    plain = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=2)
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0
    chunks = list(client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=3, stream=True,
                                                 reasoning_effort="high", stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3
    # raw completions: a prompt that opens a thinking block spends its completion on reasoning
    raw = client.completions.create(model="banyan-tiny", prompt=[THINK_PROMPT, "plain text"], max_tokens=3)
    assert raw.usage.completion_tokens_details.reasoning_tokens == 3 and raw.usage.completion_tokens == 6
    chunks = list(client.completions.create(model="banyan-tiny", prompt=THINK_PROMPT, max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 3


def _log_after(server, offset: int, needle: str, timeout: float = 20.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        tail = server.log()[offset:]
        if needle in tail:
            return tail
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not logged:\n{server.log()[offset:]}")


def test_disconnects_and_bad_requests_log_one_line_without_traceback(server):
    offset = len(server.log())
    long = {"messages": MSGS, "max_tokens": 400, "ignore_eos": True}
    with server.http() as http:
        assert http.post("/v1/chat/completions", json={"messages": MSGS, "n": 0}).status_code == 400
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=long, timeout=1.5)
        with http.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as r:
            next(r.iter_lines())
    tail = _log_after(server, offset, "client disconnected during a stream")
    tail = _log_after(server, offset, "the client disconnected; its requests were aborted")
    assert "POST /v1/chat/completions -> 400: n: " in tail
    assert "Traceback" not in tail and "ERROR" not in tail
    # both aborted requests gave their room back (a shutdown would otherwise wait for them)
    deadline = time.time() + 10
    while in_flight(server) and time.time() < deadline:
        time.sleep(0.1)
    assert in_flight(server) == 0


def in_flight(server) -> float:
    with server.http() as http:
        lines = http.get("/metrics").text.splitlines()
    return next(float(line.split()[-1]) for line in lines if line.startswith("banyan:num_requests_in_flight "))
