"""The model on the Triton kernels (`BANYAN_KERNELS=triton`, under Triton's interpreter on CPU)
against the torch path: the same greedy tokens and close logits through a prefill and 16
decode steps that cross page, compressor-window and sliding-window boundaries.

The model is the tiny config shrunk to what the interpreter runs in seconds while keeping
every feature: one SWA, one CSA and one HCA layer (HCA ratio 16, so 16-token pages), a hash
layer and top-k layers, loaded as the checkpoint stores it (FP8 linears, FP4 routed experts)
and dequantised (dense fp32 weights)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is decorated

import pytest  # noqa: E402
import torch  # noqa: E402

from banyan.kernels import dispatch  # noqa: E402
from banyan.model.config import ModelConfig  # noqa: E402
from banyan.model.generate import SimpleSession  # noqa: E402
from banyan.model.loader import load_model  # noqa: E402
from banyan.model.make_tiny import make_tiny  # noqa: E402

PROMPT, STEPS = 24, 16  # 24 + 16 tokens: pages of 16 end at 16 (prefill) and 32 (decode)
LOGIT_TOL = 1e-4  # fp32 everywhere; the kernels sum in other orders than torch


def _config() -> ModelConfig:
    return ModelConfig.preset("tiny").replace(
        num_layers=3, compress_ratios=(0, 4, 16), hca_ratio=16, num_hash_layers=1, vocab_size=1024,
        sliding_window=32, index_topk=4, head_dim=64, index_n_heads=4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny-triton"), cfg=_config(), seed=3, mtp=False)


def _greedy(model, backend: str, monkeypatch) -> tuple[list[int], torch.Tensor]:
    """Prefill then STEPS greedy decode steps on `backend`: (tokens, logits `[1 + STEPS, V]`)."""
    monkeypatch.setenv("BANYAN_KERNELS", backend)
    assert set(dispatch.selected("cpu").values()) == {backend}
    prompt = torch.randint(3, model.cfg.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    session = SimpleSession(model, max_tokens=PROMPT + STEPS, max_requests=1)
    assert session.page_size == 16
    tokens, logits = [], [session.extend({0: prompt})[0]]
    for _ in range(STEPS):
        tokens.append(int(logits[-1].argmax()))
        logits.append(session.extend({0: tokens[-1:]})[0])
    return tokens, torch.stack(logits)


@pytest.mark.parametrize("weight_format", ["native", pytest.param("dequant", marks=pytest.mark.slow)])
def test_triton_kernels_reproduce_the_torch_path(checkpoint, weight_format, monkeypatch):
    model = load_model(checkpoint, dtype=torch.float32, progress=False, weight_format=weight_format)
    quant = {m.quant for name, m in model.named_modules() if name.endswith(("experts.w1", "attn.wq_a"))}
    assert quant == ({"fp4", "fp8"} if weight_format == "native" else {None})  # dense experts are parameters
    with torch.no_grad():
        want_tokens, want = _greedy(model, "torch", monkeypatch)
        got_tokens, got = _greedy(model, "triton", monkeypatch)
    assert got_tokens == want_tokens
    assert len(set(want_tokens)) > 4  # a sequence that moves, not one repeated token
    err = (got - want).abs().max().item()
    assert err <= LOGIT_TOL * want.abs().max().item(), f"max logit error {err:.2e}"


def test_bf16_prefill_on_triton_kernels(checkpoint, monkeypatch):
    """bf16 activations (the GPU's dtype) through every kernel, one prefill: the Triton logits
    are as close to the fp32 torch logits as the bf16 torch path's are (the paths round at
    different points, so neither is the reference for the other)."""
    prompt = torch.randint(3, _config().vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(1)).tolist()
    logits = {}
    for dtype, backend in ((torch.float32, "torch"), (torch.bfloat16, "torch"), (torch.bfloat16, "triton")):
        model = load_model(checkpoint, dtype=dtype, progress=False, weight_format="native")
        monkeypatch.setenv("BANYAN_KERNELS", backend)
        with torch.no_grad():
            out = SimpleSession(model, max_tokens=PROMPT, max_requests=1).extend({0: prompt})[0]
        logits[dtype, backend] = out.float()
    exact = logits[torch.float32, "torch"]
    torch_err = (logits[torch.bfloat16, "torch"] - exact).abs().max().item()
    triton_err = (logits[torch.bfloat16, "triton"] - exact).abs().max().item()
    assert 0 < triton_err <= 2 * torch_err  # measured: 0.034 and 0.033 at logits up to 4.1
