"""Speculative decoding benchmark on tiny settings: with the perfect drafter every draft is
kept and K = 3 needs one target forward per K + 1 tokens; the drafter training script lowers
its loss on what it saw and writes a checkpoint that speculates."""

from __future__ import annotations

import json

from banyan.benchmarks import cli, train_drafter
from banyan.benchmarks.speculative import prompts


def test_perfect_drafter_keeps_every_draft(tmp_path):
    out = tmp_path / "spec.json"
    assert cli.main(["speculative", "--drafter", "perfect", "--k", "0", "3", "--prompts", "1", "--prompt-len", "16",
                     "--new-tokens", "13", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "speculative" and [d["drafter"] for d in result["drafters"]] == ["perfect"]
    runs = {r["k"]: r for r in result["drafters"][0]["runs"]}
    assert runs[0]["target_forwards"] == 13 and runs[0]["verify_steps"] == 0  # prefill + 12 decode steps
    assert runs[3]["target_forwards"] == 1 + 3 and runs[3]["verify_steps"] == 3  # prefill + 12 / (K + 1)
    assert runs[3]["target_forwards_per_token"] == 4 / 13 and runs[3]["tokens_per_verify_step"] == 4
    assert runs[3]["acceptance_per_position"] == [1.0, 1.0, 1.0]
    assert runs[3]["same_output_as_k0"] and runs[3]["decode_tok_s"] > 0


def test_train_drafter_fits_what_it_saw_and_writes_a_checkpoint(tmp_path):
    from banyan.runtime.engine import Engine

    seen, unseen = prompts(1, 16, seed=1), prompts(1, 16, seed=2)
    summary = train_drafter.train(tmp_path / "drafter", seen, unseen, new_tokens=12, steps=4, log=lambda _: None)
    assert summary["loss_after"]["seen"] < summary["loss_before"]["seen"]
    assert all(".ffn." in n or n.endswith(".norm.weight") for n in summary["trained_tensors"])
    params = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}
    options = dict(max_running_requests=1, kv_cache_bytes=16 << 20, chunked_prefill_size=128)
    with Engine(str(tmp_path / "drafter"), speculative_algorithm="mtp", speculative_num_draft_tokens=2,
                **options) as engine:
        out = engine.generate(input_ids=seen[0], sampling_params=params)
    assert out["meta_info"]["spec_verify_ct"] > 0 and len(out["output_ids"]) == 6
