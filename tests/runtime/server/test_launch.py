"""The launch spellings of the other engines: `python -m banyan.launch_server --model-path`, and
`--reasoning-parser` / `--tool-call-parser` with V4's names."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from banyan.runtime.cli import V4_PARSERS, _engine_flags, build_parser


def test_launch_server_module_has_the_serve_flags():
    out = subprocess.run([sys.executable, "-m", "banyan.launch_server", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m banyan.launch_server")
    for flag in ("--model-path", "--reasoning-parser", "--tool-call-parser", "--port", "--served-model-name"):
        assert flag in out.stdout


@pytest.mark.parametrize("name", V4_PARSERS)
def test_parser_flags_are_logged_no_ops(name, caplog):
    args = build_parser().parse_args(["serve", "--model-path", "/models/v4", "--reasoning-parser", name,
                                      "--tool-call-parser", name])
    with caplog.at_level(logging.WARNING, logger="banyan.server"):
        _engine_flags(args)
    assert args.model_path == "/models/v4"
    assert [r.getMessage() for r in caplog.records] == [
        f"--{flag} {name} has no effect: DeepSeek-V4 reasoning and tool-call parsing is built in"
        for flag in ("reasoning-parser", "tool-call-parser")]


def test_unknown_parser_and_conflicting_model_paths_are_errors(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--tool-call-parser", "qwen3"])
    assert info.value.code == 2 and "invalid choice: 'qwen3'" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "/models/a", "--model", "/models/b"])
    with pytest.raises(SystemExit, match="disagree"):
        _engine_flags(args)
