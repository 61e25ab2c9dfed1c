"""Names users type: hub ids resolved offline from a Hugging Face cache, `from banyan.runtime import Engine`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.file_download import repo_folder_name

from banyan.model.hub import ModelNotFoundError, is_hub_id, resolve_model_path
from banyan.model.loader import load_model
from banyan.runtime.options import EngineOptions
from banyan.tests.conftest import random_prompt
from banyan.tests.model.test_loader import save_with_transformers

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """Lay `checkpoint` out in `cache` as huggingface_hub does: content-addressed blobs,
    `snapshots/<revision>/` symlinks to them, and `refs/main` naming the revision."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(checkpoint.iterdir())):
        blob = repo / "blobs" / f"blob{i:04d}"
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_official) -> Path:
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "test-org/tiny-v4", tiny_official)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_resolves_to_its_cached_snapshot(hub_cache, tiny_model):
    snapshot = hub_cache / "models--test-org--tiny-v4" / "snapshots" / REVISION
    assert Path(resolve_model_path("test-org/tiny-v4")) == snapshot
    assert EngineOptions(model_path="test-org/tiny-v4").model_path == str(snapshot)
    model = load_model("test-org/tiny-v4", progress=False)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_models_name_where_banyan_looked(hub_cache, tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match=rf"Hugging Face cache {hub_cache} has no snapshot of it"):
        resolve_model_path("deepseek-ai/DeepSeek-V4-Flash")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        EngineOptions(model_path=str(tmp_path / "nowhere"))
    assert is_hub_id("deepseek-ai/DeepSeek-V4-Flash") and not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
    monkeypatch.chdir(tmp_path)
    Path("org/name").mkdir(parents=True)
    assert not is_hub_id("org/name") and resolve_model_path("org/name") == "org/name"  # an existing path wins


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_HOME", "HUGGINGFACE_HUB_CACHE")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def test_the_cli_honours_hf_home_and_hf_hub_cache(tmp_path, tiny_official):
    home = tmp_path / "hf-home"
    snapshot = fake_hub_cache(home / "hub", "test-org/tiny-v4", tiny_official)
    code = "from banyan.model.hub import resolve_model_path; print(resolve_model_path('test-org/tiny-v4'))"
    found = subprocess.run([sys.executable, "-c", code], env=_env(HF_HOME=str(home)), capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 0 and found.stdout.strip() == str(snapshot), found.stderr
    empty = tmp_path / "empty-cache"
    served = subprocess.run([sys.executable, "-m", "banyan.runtime.cli", "serve", "test-org/absent"],
                            env=_env(HF_HUB_CACHE=str(empty)), capture_output=True, text=True, timeout=120)
    assert served.returncode == 2
    assert f"banyan: error: 'test-org/absent' is not a local directory, and the Hugging Face cache {empty}" \
        in served.stderr


def test_runtime_exports_engine_lazily():
    code = ("import sys, banyan.runtime as r; assert 'banyan.runtime.engine' not in sys.modules; "
            "from banyan.runtime import Engine; from banyan.runtime.engine import Engine as E; "
            "assert Engine is E; print(sorted(r.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Engine" in out.stdout and "EngineOptions" in out.stdout
    import banyan.runtime

    with pytest.raises(AttributeError, match="has no attribute 'Engin'"):
        banyan.runtime.Engin  # noqa: B018


def test_engine_serves_a_transformers_saved_hub_snapshot_like_the_oracle(oracle, tmp_path, monkeypatch):
    """`Engine("org/name")` on what transformers' save_pretrained wrote, found in the HF cache."""
    from banyan.runtime import Engine

    saved = save_with_transformers(oracle, tmp_path / "saved", built=True)
    fake_hub_cache(tmp_path / "hub", "test-org/v4-saved", saved)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ids = random_prompt(140, seed=12)
    with torch.no_grad():
        theirs = oracle.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=None, pad_token_id=1)[0, len(ids):].tolist()
    with Engine("test-org/v4-saved", max_running_requests=2, kv_cache_bytes=32 << 20) as engine:
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 6, "temperature": 0})
    assert out["output_ids"] == theirs
