"""`Engine(speculative_algorithm="mtp")`: MTP speculative decoding end to end, greedy output
unchanged; a checkpoint without an MTP layer is refused with a clear message."""

from __future__ import annotations

import pytest

from banyan.runtime.engine import Engine, EngineDeadError
from banyan.tests.conftest import random_prompt

OPTIONS = dict(max_running_requests=4, kv_cache_bytes=32 << 20, chunked_prefill_size=128)


def test_mtp_speculation_keeps_greedy_output(tiny_official):
    prompts = [random_prompt(150, seed=81), random_prompt(20, seed=82)]
    params = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    with Engine(tiny_official, **OPTIONS) as plain:
        want = [plain.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    with Engine(tiny_official, speculative_algorithm="mtp", speculative_num_draft_tokens=2, **OPTIONS) as spec:
        got = [spec.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]
    assert got == want


def test_speculation_without_an_mtp_layer_is_refused(tmp_path):
    from banyan.model.make_tiny import make_tiny

    path = make_tiny(tmp_path / "no-mtp", mtp=False)
    with pytest.raises(EngineDeadError, match="no mtp"):
        Engine(path, speculative_algorithm="mtp", **OPTIONS)


def scrape(text: str) -> dict[str, float]:
    """`name{labels}` -> value of every sample in a Prometheus exposition."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_acceptance_in_meta_info_and_metrics_equals_the_schedulers_counts(tmp_path):
    """On a checkpoint whose MTP layer drafts perfectly (benchmarks.speculative), one request of
    1 + 7 * (K + 1) tokens with K = 3 takes exactly 7 verify steps that keep every draft."""
    from banyan.benchmarks.speculative import predictable_checkpoint
    from banyan.tests.runtime.server.conftest import start_server

    k, steps = 3, 7
    new = 1 + steps * (k + 1)
    srv = start_server(predictable_checkpoint(tmp_path / "perfect"), tmp_path / "server.log",
                       "--speculative-algorithm", "mtp", "--speculative-num-draft-tokens", str(k))
    try:
        with srv.http() as http:
            out = http.post("/generate", json={"input_ids": random_prompt(40, seed=5), "sampling_params": {
                "max_new_tokens": new, "temperature": 0, "ignore_eos": True}}).json()
            stats = http.get("/server_info").json()["internal_states"][0]
            metrics = scrape(http.get("/metrics").text)
    finally:
        srv.stop()
    meta = out["meta_info"]
    assert meta["completion_tokens"] == len(out["output_ids"]) == new
    assert meta["spec_verify_ct"] == stats["spec_verify_steps"] == steps
    assert meta["spec_draft_token_num"] == meta["spec_accept_token_num"] == stats["spec_draft_tokens"] \
        == stats["spec_accepted_tokens"] == steps * k
    assert meta["spec_accept_rate"] == 1.0 and meta["spec_accept_length"] == pytest.approx(new / steps)
    assert metrics["banyan:spec_decode_num_drafts_total"] == stats["spec_verify_steps"]
    assert metrics["banyan:spec_decode_num_draft_tokens_total"] == stats["spec_draft_tokens"]
    assert metrics["banyan:spec_decode_num_accepted_tokens_total"] == stats["spec_accepted_tokens"]
    per_pos = [metrics[f'banyan:spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}}'] for i in range(k)]
    assert per_pos == stats["spec_accepted_at"] == [steps] * k
