"""Prometheus metrics (`/metrics`), named like vLLM's with a `banyan:` prefix.

Request counters and latency histograms are updated by the routes; queue and pool gauges
are read from the scheduler at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .state import ServerState

PREFIX = "banyan:"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _SchedulerCollector(Collector):
    def __init__(self, state: "ServerState") -> None:
        self.state = state

    def collect(self) -> Iterator:
        engine = self.state.engine
        if engine is None:
            return
        s = engine.stats()
        gauges = {
            "num_requests_running": ("Requests in the running batch.", s["running"]),
            "num_requests_waiting": ("Requests waiting to be scheduled.", s["waiting"]),
            "kv_cache_usage_perc": ("Fraction of compressed-KV pages in use (1 = full).",
                                    1 - s["pages_free"] / max(s["pages_total"], 1)),
            "swa_cache_usage_perc": ("Fraction of sliding-window pages in use.",
                                     1 - s["swa_pages_free"] / max(s["swa_pages_total"], 1)),
            "cached_pages": ("Pages held by the radix prefix cache.", s["cached_pages"]),
            "free_pages": ("Free compressed-KV pages.", s["pages_free"]),
            "token_capacity": ("Tokens the KV pools can hold.", s["token_capacity"]),
            "num_requests_in_flight": ("Requests admitted by the HTTP server and not finished.",
                                       self.state.in_flight),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=value)
        counters = {
            "prefix_cache_hits": ("Prompt tokens served from the prefix cache.", s["cache_hit_tokens"]),
            "prefill_tokens_computed": ("Prompt tokens run through the model.", s["prefill_tokens"]),
            "num_preemptions": ("Requests retracted under memory pressure.", s["retractions"]),
            "evicted_pages": ("Cached pages evicted.", s["evicted_pages"]),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
        yield from _speculation(s)


def _speculation(s: dict) -> Iterator:
    """Speculative decoding counters under vLLM's names: drafts (request-steps that verified
    drafts), draft tokens, accepted tokens, and accepted tokens by draft position."""
    counters = {
        "spec_decode_num_drafts": ("Number of spec decoding drafts.", s["spec_verify_steps"]),
        "spec_decode_num_draft_tokens": ("Number of draft tokens.", s["spec_draft_tokens"]),
        "spec_decode_num_accepted_tokens": ("Number of accepted tokens.", s["spec_accepted_tokens"]),
    }
    for name, (doc, value) in counters.items():
        yield CounterMetricFamily(PREFIX + name, doc, value=value)
    per_pos = CounterMetricFamily(PREFIX + "spec_decode_num_accepted_tokens_per_pos",
                                  "Accepted tokens per draft position.", labels=["position"])
    for position, value in enumerate(s["spec_accepted_at"]):
        per_pos.add_metric([str(position)], value)
    yield per_pos


class ServerMetrics:
    def __init__(self, state: "ServerState") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", registry=r)
        self.request_success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                       ["finished_reason"], registry=r)
        self.rejected = Counter(PREFIX + "request_rejected", "Requests refused because the queue was full.",
                                registry=r)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds", "Mean time per output token after the first.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "End-to-end request latency.",
                             buckets=LATENCY_BUCKETS, registry=r)
        r.register(_SchedulerCollector(state))

    def observe(self, meta: dict, started: float, first_token: float | None, finished: float) -> None:
        """Account one finished engine request from its `meta_info`."""
        self.prompt_tokens.inc(meta["prompt_tokens"])
        self.generation_tokens.inc(meta["completion_tokens"])
        reason = (meta.get("finish_reason") or {}).get("type", "unknown")
        self.request_success.labels(finished_reason=reason).inc()
        self.e2e.observe(finished - started)
        if first_token is not None:
            self.ttft.observe(first_token - started)
            if meta["completion_tokens"] > 1:
                self.tpot.observe((finished - first_token) / (meta["completion_tokens"] - 1))

    def count_aborted(self, count: int) -> None:
        """Requests cut short by their client."""
        if count:
            self.request_success.labels(finished_reason="abort").inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
