import torch

from banyan.model.default import default_model_dir
from banyan.model.generate import greedy_generate
from banyan.model.loader import load_model
from banyan.runtime.cli import main
from banyan.runtime.tokenizer import load_tokenizer


def test_generate_command_prints_greedy_completion(tiny_official, capsys):
    assert main(["generate", str(tiny_official), "--prompt", "Hello", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip()
    tok = load_tokenizer()
    model = load_model(tiny_official, progress=False)
    expected = greedy_generate(model, [0] + tok.encode("Hello", add_special_tokens=False), 5, stop_ids=(1,))
    assert printed == tok.decode(expected, skip_special_tokens=True).strip()


def test_default_model_is_built_once_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("BANYAN_HOME", str(tmp_path))
    first = default_model_dir()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert default_model_dir() == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setenv("BANYAN_HOME", str(tmp_path / "other"))
    again = default_model_dir()
    a, b = load_model(first, progress=False).state_dict(), load_model(again, progress=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
