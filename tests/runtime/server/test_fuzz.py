"""Property-based fuzzing of every route in the app's OpenAPI schema (schemathesis): valid and
invalid inputs alike must get an answer below 500, in time. The run is bounded: a few examples
per operation, a short context so that no generation runs long, a timeout on every call."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from .conftest import API_KEY, start_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXAMPLES_PER_OPERATION = 12
CALL_TIMEOUT_S = 30
GRAMMAR_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def fuzzed(tiny_official, tmp_path_factory):
    srv = start_server(tiny_official, tmp_path_factory.mktemp("fuzz") / "server.log", "--max-model-len", "96",
                       "--grammar-compile-timeout", str(GRAMMAR_TIMEOUT_S))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json", headers=AUTH)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_route_answers_5xx_or_hangs(case):
    response = case.call(headers=AUTH, timeout=CALL_TIMEOUT_S)
    assert response.status_code < 500, (f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                        f"{response.text[:300]}\nbody: {str(case.body)[:300]}")


def test_server_is_whole_after_the_fuzzing(fuzzed, api_schema):
    with fuzzed.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
        r = http.post("/generate", json={"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3}})
        assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 3
    assert "Traceback" not in fuzzed.log(), "the server logged an unhandled error"


@pytest.mark.parametrize("path, body", [
    ("/tokenize", {"messages": []}),  # once an uncaught pydantic ValidationError
    ("/v1/completions", {"prompt": [1, -390], "max_tokens": 1, "echo": True}),  # once an OverflowError in echo
    ("/generate", {"input_ids": [[1, 2], "x"]}),
    ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"not-a-token": 1}}}),
    ("/generate", {"text": "hi", "return_logprob": True, "top_logprobs_num": "3"}),
])
def test_inputs_that_once_crashed_get_400(fuzzed, path, body):
    with fuzzed.http() as http:
        r = http.post(path, json=body)
    assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_pathological_response_format_gets_400_at_the_compile_deadline(fuzzed):
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-z]{1,12000}"}}}
    body = {"model": "banyan-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    with fuzzed.http() as http:
        http.post("/v1/chat/completions", json={**body, "response_format": {"type": "json_object"}})  # warm up
        started = time.time()
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and f"did not compile within {GRAMMAR_TIMEOUT_S} s" in r.json()["error"]["message"]
    assert time.time() - started < GRAMMAR_TIMEOUT_S + 5
