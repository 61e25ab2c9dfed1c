"""Long-context benchmark smoke test: tiny lengths through fresh subprocesses, Banyan and
transformers side by side, transformers skipped above --hf-max-length."""

from __future__ import annotations

import json
import statistics

import pytest

from banyan.benchmarks import long_context


def test_rows_ratios_and_skips(tiny_official, tmp_path):
    out = tmp_path / "long.json"
    assert long_context.main(["--model-path", str(tiny_official), "--lengths", "300", "600", "--decode-tokens", "2",
                              "--hf-max-length", "300", "--short-length", "300", "--long-length", "600",
                              "--chunked-prefill-size", "256", "--paired-rounds", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "long-context"
    rows = {(r["length"], r["system"]): r for r in result["rows"]}
    assert set(rows) == {(300, "banyan"), (300, "hf"), (600, "banyan"), (600, "hf")}
    assert rows[600, "hf"]["status"] == "skipped" and "--hf-max-length 300" in rows[600, "hf"]["reason"]
    for key in ((300, "banyan"), (300, "hf"), (600, "banyan")):
        r = rows[key]
        assert r["status"] == "ok" and r["decode_tokens"] == 2
        assert r["prefill_s"] > 0 and r["prefill_tok_s"] == pytest.approx(r["length"] / r["prefill_s"])
        assert r["tpot_ms"] > 0
        assert r["peak_rss_mb"] > 100  # the process holding the model: torch and the weights at least
    ratios = {r["name"]: r for r in result["ratios"]}
    expected = {"banyan prefill tok/s, 600 / 300": rows[600, "banyan"]["prefill_tok_s"] / rows[300, "banyan"]["prefill_tok_s"],
                "banyan TPOT, 600 / 300": rows[600, "banyan"]["tpot_ms"] / rows[300, "banyan"]["tpot_ms"],
                "prefill tok/s at 300, banyan / hf": rows[300, "banyan"]["prefill_tok_s"] / rows[300, "hf"]["prefill_tok_s"],
                "TPOT at 300, banyan / hf": rows[300, "banyan"]["tpot_ms"] / rows[300, "hf"]["tpot_ms"],
                "banyan TPOT, 600 / 300, paired rounds": statistics.median(r["ratio"] for r in result["paired"]["rounds"])}
    assert {name: r["value"] for name, r in ratios.items()} == pytest.approx(expected)
    paired = result["paired"]
    assert (paired["status"], paired["system"], paired["length"], paired["short_length"]) == ("ok", "banyan-paired", 600, 300)
    assert [r["order"] for r in paired["rounds"]] == [["short", "long"], ["long", "short"], ["short", "long"]]
    page = paired["page_size"]
    for r in paired["rounds"]:
        assert r["short_tpot_ms"] > 0 and r["ratio"] == pytest.approx(r["long_tpot_ms"] / r["short_tpot_ms"])
        # each round restores its prompt from the prefix cache: all but the last page
        assert (r["short_cached_tokens"], r["long_cached_tokens"]) == (299 // page * page, 599 // page * page)
        assert r["long_cached_tokens"] > 0
    assert paired["ratio_median"] == pytest.approx(sorted(r["ratio"] for r in paired["rounds"])[1])
    assert paired["long_tpot_ms"] == pytest.approx(sorted(r["long_tpot_ms"] for r in paired["rounds"])[1])
    for name in ("prefill", "tpot", "memory"):
        assert (tmp_path / f"long-{name}.png").stat().st_size > 1000


def test_ratio_without_its_rows_is_none():
    rows = [{"system": "banyan", "length": 1024, "status": "ok", "prefill_tok_s": 10.0, "tpot_ms": 2.0},
            {"system": "hf", "length": 1024, "status": "error", "error": "boom"}]
    values = {r["name"]: r["value"] for r in long_context.ratios(rows, 1024, 32768, 16384)}
    assert values == {"banyan prefill tok/s, 32768 / 1024": None, "banyan TPOT, 32768 / 1024": None,
                      "prefill tok/s at 16384, banyan / hf": None, "TPOT at 1024, banyan / hf": None}


def test_timings_use_the_first_token_and_median_gap():
    t = long_context.timings(1000, 10.0, [12.0, 12.1, 12.2, 15.0])
    assert t["prefill_s"] == pytest.approx(2.0) and t["prefill_tok_s"] == pytest.approx(500.0)
    assert t["tpot_ms"] == pytest.approx(100.0) and t["decode_tokens"] == 4  # the 2.8 s stall is not the median
    with pytest.raises(RuntimeError, match="at least 2"):
        long_context.timings(1000, 0.0, [1.0])


def test_failed_run_is_reported_with_its_reason(tmp_path, capsys):
    """A worker that cannot load its model gives an error row and a non-zero exit, not a crash."""
    out = tmp_path / "bad.json"
    missing = tmp_path / "no-such-model"
    assert long_context.main(["--model-path", str(missing), "--systems", "banyan", "--lengths", "300",
                              "--decode-tokens", "2", "--out", str(out), "--no-plots"]) == 1
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["status"] == "error" and "exit code" in row["error"]
    assert result["paired"]["status"] == "error" and "exit code" in result["paired"]["error"]
    assert result["ratios"][-1]["name"].endswith("paired rounds") and result["ratios"][-1]["value"] is None
    assert long_context.main(["--model-path", str(missing), "--systems", "banyan", "--lengths", "300",
                              "--decode-tokens", "2", "--paired-rounds", "0", "--out", str(out), "--no-plots"]) == 1
    result = json.loads(out.read_text())
    assert result["paired"] is None and not any("paired" in r["name"] for r in result["ratios"])
    assert "error" in capsys.readouterr().out


def test_repeats_keep_each_metrics_best_run():
    runs = [{"system": "banyan", "length": 1024, "status": "ok", "prefill_s": 0.5, "prefill_tok_s": 2048.0,
             "tpot_ms": 9.0, "peak_rss_mb": 1000.0, "decode_tokens": 32},
            {"system": "banyan", "length": 1024, "status": "error", "error": "boom"},
            {"system": "banyan", "length": 1024, "status": "ok", "prefill_s": 0.4, "prefill_tok_s": 2560.0,
             "tpot_ms": 11.0, "peak_rss_mb": 1100.0, "decode_tokens": 32}]
    row = long_context.best_of(runs)
    assert (row["status"], row["prefill_s"], row["prefill_tok_s"]) == ("ok", 0.4, 2560.0)  # the fastest prefill
    assert row["tpot_ms"] == 9.0 and row["peak_rss_mb"] == 1100.0  # the least TPOT, the largest peak
    assert [r["status"] for r in row["runs"]] == ["ok", "error", "ok"]
    assert long_context.best_of(runs[1:2]) == runs[1]  # no run succeeded: the error stands
    with pytest.raises(SystemExit, match="--repeats"):
        long_context.main(["--repeats", "0"])
    with pytest.raises(SystemExit, match="--paired-rounds"):
        long_context.main(["--paired-rounds", "-1"])
