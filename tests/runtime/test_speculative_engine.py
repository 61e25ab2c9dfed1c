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
