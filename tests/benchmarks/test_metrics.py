import math

import pytest

from banyan.benchmarks.metrics import RequestRecord, cached_ratio, distribution, summarize


def test_distribution_percentiles_interpolate_linearly():
    d = distribution(range(1, 101))  # 1..100
    assert d["mean"] == 50.5
    assert d["p50"] == pytest.approx(50.5)
    assert d["p90"] == pytest.approx(90.1)
    assert d["p99"] == pytest.approx(99.01)
    assert distribution([7.0]) == {"mean": 7.0, "p50": 7.0, "p90": 7.0, "p99": 7.0}
    assert distribution([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_ttft_tpot_itl_from_timestamps():
    # sent at 10.0; chunks at 10.5 (1 token), 10.7 (2 tokens), 11.0 (1 token); done at 11.1
    r = RequestRecord(start=10.0, end=11.1, chunk_times=[10.5, 10.7, 11.0], output_tokens=4)
    assert r.ttft == pytest.approx(0.5)
    assert r.e2e == pytest.approx(1.1)
    assert r.tpot == pytest.approx((11.1 - 10.5) / 3)  # decode time over the tokens after the first
    assert r.itl == pytest.approx([0.2, 0.3])
    one = RequestRecord(start=0.0, end=1.0, chunk_times=[0.4], output_tokens=1)
    assert one.tpot is None and one.itl == []
    assert RequestRecord(start=0.0, end=1.0).ttft is None


def test_cached_ratio_counts_tokens_not_requests():
    records = [RequestRecord(0, prompt_tokens=100, cached_tokens=0),
               RequestRecord(0, prompt_tokens=300, cached_tokens=256)]
    assert cached_ratio(records) == 256 / 400
    assert cached_ratio([]) == 0.0


def test_summary_throughputs_and_errors():
    ok = [RequestRecord(start=0.0, end=2.0, chunk_times=[0.5, 1.0, 1.5], prompt_tokens=10, output_tokens=4,
                        cached_tokens=5),
          RequestRecord(start=1.0, end=4.0, chunk_times=[2.0, 3.0], prompt_tokens=30, output_tokens=2)]
    failed = RequestRecord(start=0.0, end=0.1, prompt_tokens=99, error="HTTP 503: busy")
    s = summarize(ok + [failed], duration=4.0)
    assert (s["completed"], s["errors"], s["error_examples"]) == (2, 1, ["HTTP 503: busy"])
    assert s["request_throughput"] == 0.5
    assert s["input_token_throughput"] == 10.0  # the failed request's tokens do not count
    assert s["output_token_throughput"] == 1.5
    assert s["cached_ratio"] == 5 / 40
    assert s["ttft_s"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["tpot_s"]["p50"] == pytest.approx((1.5 / 3 + 2.0 / 1) / 2)
    assert s["itl_s"]["mean"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert s["e2e_s"]["p99"] == pytest.approx(2.0 + 0.99 * 1.0)
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())
