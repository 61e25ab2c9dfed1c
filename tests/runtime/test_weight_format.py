"""`weight_format` through the Engine: the scheduler process runs the native model, and the
start-up footprint it reports is the loaded model's and the pools'."""

from __future__ import annotations

import pytest

from banyan.model.footprint import resident_weight_bytes
from banyan.model.generate import greedy_generate
from banyan.model.loader import load_model
from banyan.runtime.engine import Engine
from banyan.runtime.options import EngineOptions
from banyan.tests.conftest import random_prompt


def test_native_engine_generates_what_the_dequantised_model_does(tiny_official, tiny_model):
    # the engine loads the MTP layer only when it speculates
    native = load_model(tiny_official, progress=False, weight_format="native", mtp="no")
    eng = Engine(tiny_official, max_running_requests=2, kv_cache_bytes=24 << 20, weight_format="native")
    try:
        ids = random_prompt(150, seed=12)
        out = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0})
        assert out["output_ids"] == greedy_generate(tiny_model, ids, 8)
        facts = eng.info["footprint"]
        assert facts["weight_bytes"] == resident_weight_bytes(native) < resident_weight_bytes(tiny_model)
        assert facts["compressed_per_token"] > 0 and facts["swa_per_token"] > 0
    finally:
        eng.shutdown()


def test_weight_format_defaults_per_device_and_rejects_unknown_ones():
    assert EngineOptions().resolved_weight_format() == "dequant"
    assert EngineOptions(device="cuda:0").resolved_weight_format() == "native"
    assert EngineOptions(device="cuda", weight_format="dequant").resolved_weight_format() == "dequant"
    with pytest.raises(ValueError, match="weight_format must be auto, native or dequant, got 'fp8'"):
        EngineOptions(weight_format="fp8").validate()
