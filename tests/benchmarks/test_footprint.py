"""`banyan bench footprint`: the table and the JSON it writes."""

from __future__ import annotations

import json

from banyan.model.config import ModelConfig
from banyan.model.footprint import GIB, footprint
from banyan.runtime.cli import main as cli_main


def test_bench_footprint_prints_and_writes_every_model(tmp_path, tiny_official, capsys):
    out = tmp_path / "footprint.json"
    assert cli_main(["bench", "footprint", "tiny", "flash", str(tiny_official), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "checkpoint" in table and "dequant_bf16" in table and "flash" in table
    result = json.loads(out.read_text())
    assert list(result) == ["tiny", "flash", str(tiny_official)]
    assert result["tiny"] == json.loads(json.dumps(footprint(ModelConfig.preset("tiny"))))
    # the checkpoint's own config (FP8 + FP4 declared) gives what the tiny preset is counted as
    assert result[str(tiny_official)]["weights"] == result["tiny"]["weights"]
    assert result["flash"]["kv"]["bf16"]["compressed_per_token"] > result["tiny"]["kv"]["bf16"]["compressed_per_token"]
    flash_line = next(line for line in table.splitlines() if line.startswith("flash"))
    for column in ("checkpoint", "dequant_bf16"):
        assert f"{result['flash']['weights'][column]['total'] / GIB:.2f}" in flash_line


def test_bench_footprint_names_a_missing_model(tmp_path, capsys):
    assert cli_main(["bench", "footprint", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
