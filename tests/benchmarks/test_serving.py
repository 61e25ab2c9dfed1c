"""Online harness smoke test against a live `banyan serve`: every dataset and backend kind,
with a handful of requests; the JSON holds the metrics with plausible values."""

from __future__ import annotations

import json

import pytest

from banyan.benchmarks import serving
from banyan.tests.runtime.server.conftest import API_KEY, start_server


@pytest.fixture(scope="module")
def url(tiny_official, tmp_path_factory):
    live = start_server(tiny_official, tmp_path_factory.mktemp("bench-server") / "server.log")
    yield live.url
    live.stop()


def bench(url: str, out, *args: str, key: str = API_KEY) -> tuple[int, dict]:
    code = serving.main(["--url", url, "--api-key", key, "--disable-tqdm", "--warmup", "1", "--out", str(out), *args])
    return code, json.loads(out.read_text())


def test_shared_prefix_sweep_on_the_native_api(url, tmp_path):
    code, result = bench(url, tmp_path / "serve.json", "--backend", "banyan", "--dataset", "shared-prefix",
                         "--num-prompts", "4", "--groups", "1", "--prefix-len", "300", "--input-len", "8:16",
                         "--output-len", "4", "--max-concurrency", "1", "2")
    assert code == 0 and [r["max_concurrency"] for r in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["completed"] == 4 and run["errors"] == 0 and run["output_tokens"] == 16
        assert run["input_tokens"] > 4 * 300 and run["request_throughput"] > 0
        assert 0.5 < run["cached_ratio"] < 1  # the system prompt's whole pages after the first request
        for metric in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            assert set(run[metric]) == {"mean", "p50", "p90", "p99"} and 0 < run[metric]["p50"] <= run[metric]["p99"]
        assert run["ttft_s"]["p50"] < run["e2e_s"]["p50"] and len(run["latencies"]["e2e_s"]) == 4
    assert (tmp_path / "serve-latency-cdf.png").stat().st_size > 1000
    assert (tmp_path / "serve-throughput-vs-concurrency.png").stat().st_size > 1000


def test_multi_turn_chat_and_jsonl_completions(url, tmp_path):
    code, result = bench(url, tmp_path / "chat.json", "--backend", "openai-chat", "--dataset", "multi-turn",
                         "--num-prompts", "2", "--turns", "2", "--input-len", "8:12", "--output-len", "3",
                         "--request-rate", "50", "--no-plots")
    (run,) = result["runs"]
    assert code == 0 and run["completed"] == 4 and run["errors"] == 0 and run["output_tokens"] == 12
    assert run["request_rate"] == 50
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello there", "max_tokens": 3}\n{"prompt": [5, 6, 7, 8]}\n')
    code, result = bench(url, tmp_path / "jsonl.json", "--backend", "openai-completions", "--dataset", "jsonl",
                         "--dataset-path", str(prompts), "--output-len", "2", "--no-plots")
    (run,) = result["runs"]
    assert code == 0 and run["completed"] == 2 and run["output_tokens"] == 5


def test_failures_are_counted_with_their_message(url, tmp_path):
    code, result = bench(url, tmp_path / "bad.json", "--backend", "banyan", "--num-prompts", "2",
                         "--input-len", "8", "--output-len", "2", "--warmup", "0", "--no-plots", key="wrong")
    (run,) = result["runs"]
    assert code == 1 and run["completed"] == 0 and run["errors"] == 2
    assert "HTTP 401" in run["error_examples"][0]
