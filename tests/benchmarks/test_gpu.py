"""GPU-mode arithmetic and its CPU smoke run (`--tiny`)."""

from __future__ import annotations

import json

import pytest

from banyan.benchmarks import gpu
from banyan.model.config import ModelConfig
from banyan.runtime.cli import main as cli_main


def test_mid_config_is_flash_scaled_down():
    cfg, flash = gpu.mid_config(), ModelConfig.preset("flash")
    assert cfg.num_layers == 12 and cfg.n_routed_experts == 32 and cfg.hidden_size == 2048
    assert cfg.layer_kinds[:4] == flash.layer_kinds[:4] and cfg.sliding_window == flash.sliding_window


def test_kv_reads_grow_with_context_until_the_window_and_top_k():
    cfg = ModelConfig.preset("tiny")
    short, long = gpu.kv_read_bytes(cfg, 64, 2), gpu.kv_read_bytes(cfg, 64_000, 2)
    assert 0 < short < long
    assert gpu.distinct_experts(cfg, 1) == pytest.approx(cfg.num_experts_per_tok / cfg.n_routed_experts)
    assert gpu.distinct_experts(cfg, 10_000) == pytest.approx(1.0)


def test_tiny_run_reports_mbu_and_mfu(tmp_path):
    out = tmp_path / "gpu.json"
    # through the `banyan bench` command line, which hands its arguments to the mode
    assert cli_main(["bench", "gpu", "--tiny", "--batches", "1", "2", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    decode = result["decode"]
    assert [d["batch"] for d in decode] == [1, 2]
    for d in decode:
        assert d["tokens_per_s"] > 0 and 0 < d["mbu"] < 1
        assert d["achieved_bytes_per_s"] == pytest.approx(d["bytes_per_step"] / (d["step_ms"] / 1e3))
    assert decode[1]["bytes_per_step"] > decode[0]["bytes_per_step"]  # more KV and experts read
    prefill = result["prefill"]
    head = result["param_groups"]["head"]["params"]
    # matmuls of every token through the active weights, the head for the last token, attention on top
    assert prefill["flops"] > 2 * (result["active_params_per_token"] - head) * prefill["tokens"] + 2 * head
    assert 0 < prefill["mfu"] < 1
