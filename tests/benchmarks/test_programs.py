"""Program benchmark smoke test: frontend programs with the cache on and off."""

from __future__ import annotations

import json

from banyan.benchmarks import programs


def test_programs_cache_on_and_off(tiny_official, tmp_path):
    out = tmp_path / "programs.json"
    assert programs.main(["--model-path", str(tiny_official), "--programs", "few-shot", "tree-of-thought",
                          "--num", "2", "--threads", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["programs"]
    for name in ("few-shot", "tree-of-thought"):
        on, off = result[name]["systems"]["cache on"], result[name]["systems"]["cache off"]
        assert on["errors"] == off["errors"] == 0 and on["programs"] == 2
        assert on["cached_ratio"] > 0.3 and off["cached_ratio"] == 0
        assert off["computed_prompt_tokens"] > on["computed_prompt_tokens"] > 0
        assert result[name]["computed_off_over_on"] > 1
    assert (tmp_path / "programs-systems.png").stat().st_size > 1000
