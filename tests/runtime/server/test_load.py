"""Queue limits, client disconnects and metrics on a live server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from .conftest import MAX_QUEUED, MAX_RUNNING, wait_idle

LONG = {"model": "banyan-tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500,
        "ignore_eos": True, "temperature": 0}


def assert_pages_back(stats: dict) -> None:
    assert stats["running"] == 0 and stats["waiting"] == 0
    assert stats["pages_free"] + stats["cached_pages"] == stats["pages_total"]
    assert stats["slots_free"] == stats["slots_total"]


def test_full_queue_gets_503_with_retry_after(server):
    body = dict(LONG, max_tokens=48)
    total = MAX_RUNNING + MAX_QUEUED + 6
    with server.http() as http, ThreadPoolExecutor(total) as pool:
        responses = list(pool.map(lambda _: http.post("/v1/chat/completions", json=body), range(total)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= MAX_RUNNING and codes.count(503) >= 1 and set(codes) <= {200, 503}
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] and rejected.json()["error"]["type"] == "service_unavailable"
    assert_pages_back(wait_idle(server))


def test_stream_disconnect_aborts_and_frees_pages(server):
    with server.http() as http:
        with http.stream("POST", "/v1/chat/completions", json=dict(LONG, stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
        running = http.get("/server_info").json()["internal_states"][0]["running"]
    started = time.time()
    stats = wait_idle(server, timeout=10)
    assert time.time() - started < 10, f"still running {running} requests after the disconnect"
    assert_pages_back(stats)


def test_non_streaming_disconnect_aborts(server):
    with server.http(timeout=1.0) as http:
        try:
            http.post("/v1/chat/completions", json=LONG)
            raise AssertionError("the request should have outlived the client's timeout")
        except httpx.TimeoutException:
            pass
    assert_pages_back(wait_idle(server, timeout=10))
    with server.http() as http:
        info = http.get("/metrics").text
    assert 'banyan:request_success_total{finished_reason="abort"}' in info


def test_metrics_exposition(server, client):
    client.chat.completions.create(model="banyan-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    text = httpx.get(server.url + "/metrics").text  # open without the API key, like /health
    for name in ("banyan:num_requests_running", "banyan:num_requests_waiting", "banyan:kv_cache_usage_perc",
                 "banyan:prompt_tokens_total", "banyan:generation_tokens_total", "banyan:prefix_cache_hits_total",
                 "banyan:e2e_request_latency_seconds_bucket", "banyan:time_to_first_token_seconds_count",
                 "banyan:cached_pages", "banyan:token_capacity"):
        assert name in text, name
    generated = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("banyan:generation_tokens_total"))
    assert generated >= 3
