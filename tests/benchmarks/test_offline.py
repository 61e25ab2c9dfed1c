"""Offline harness smoke test: Engine with the cache on and off and transformers' generate on
a handful of requests; the JSON holds every metric with plausible values."""

from __future__ import annotations

import json

from banyan.benchmarks import offline


def test_three_systems_side_by_side(tiny_official, tmp_path):
    out = tmp_path / "offline.json"
    assert offline.main(["--model-path", str(tiny_official), "--num-requests", "3", "--input-len", "8:40",
                         "--output-len", "2:4", "--shared-requests", "3", "--prefix-len", "256", "--suffix-len", "8",
                         "--shared-output-len", "2", "--decode-steps", "4", "--hf-batch-size", "2",
                         "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    mixed, shared = result["workloads"]["mixed"], result["workloads"]["shared-prefix"]
    assert mixed["requests"] == 3 and set(mixed["systems"]) == {"banyan", "banyan-no-cache", "hf"}
    for w in (mixed, shared):
        for name, system in w["systems"].items():
            assert system["requests"] == w["requests"] and system["output_tokens"] == w["output_tokens"]
            assert system["seconds"] > 0 and system["requests_per_s"] > 0
        hf = w["systems"]["hf"]
        assert hf["computed_prompt_tokens"] >= w["prompt_tokens"]  # left padding is computed too
    assert shared["unique_prompt_tokens"] == 256 + 3 * 8
    # cache on: the shared 256 tokens once (two whole pages), cache off: once per request
    assert shared["systems"]["banyan"]["computed_prompt_tokens"] == 256 + 3 * 8
    assert shared["systems"]["banyan"]["cached_ratio"] > 0.6
    assert shared["systems"]["banyan-no-cache"]["computed_prompt_tokens"] == shared["prompt_tokens"]
    overhead = result["decode_overhead"]
    assert overhead["steps"] == 4 and overhead["engine_step_ms"] > 0 and overhead["model_step_ms"] > 0
    assert {c["name"] for c in result["checks"]} >= {"mixed: banyan / hf requests/s",
                                                     "shared-prefix: cache on / off requests/s"}
    assert (tmp_path / "offline-systems.png").stat().st_size > 1000
