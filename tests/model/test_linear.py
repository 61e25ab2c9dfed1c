"""`model.linear.Linear`: checkpoint-named storage in each format, the ops it calls, `to_native`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from banyan.kernels.quant import QuantizedWeight, quantize_fp4, quantize_fp8
from banyan.model.config import ModelConfig
from banyan.model.linear import Linear, to_native
from banyan.model.network import DeepseekV4


def test_storage_uses_the_checkpoint_names_and_dtypes():
    dense = Linear(64, 200, torch.bfloat16)
    assert list(dense.state_dict()) == ["weight"] and dense.weight.dtype == torch.bfloat16
    assert [n for n, _ in dense.named_parameters()] == ["weight"]
    fp8 = Linear(160, 200, quant="fp8")
    assert {k: (tuple(v.shape), v.dtype) for k, v in fp8.state_dict().items()} == {
        "weight": ((200, 160), torch.float8_e4m3fn), "scale": ((2, 2), torch.float8_e8m0fnu)}
    assert not list(fp8.parameters())  # stored bytes are buffers, never trained
    fp4 = Linear(64, 96, quant="fp4", stack=8)
    assert {k: tuple(v.shape) for k, v in fp4.state_dict().items()} == {"weight": (8, 96, 32), "scale": (8, 96, 2)}
    assert fp4.weight.dtype == torch.int8


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="quant must be None, 'fp8' or 'fp4', got 'int4'"):
        Linear(64, 64, quant="int4")
    with pytest.raises(ValueError, match="multiple of 32, got 48"):
        Linear(48, 64, quant="fp4")


def _filled(fmt: str, w: torch.Tensor, stack: int | None = None) -> Linear:
    """A Linear holding `w` ([out, in], or [E, out, in] with `stack`) quantised to `fmt`."""
    mod = Linear(w.shape[-1], w.shape[-2], quant=fmt, stack=stack)
    quantize = quantize_fp8 if fmt == "fp8" else quantize_fp4
    mats = [quantize(m) for m in (w if stack else w[None])]
    with torch.no_grad():
        mod.weight.copy_(torch.stack([d for d, _ in mats]).view(mod.weight.shape))
        mod.scale.copy_(torch.stack([s for _, s in mats]).view(mod.scale.shape))
    return mod


@pytest.mark.parametrize("fmt", ["fp8", "fp4"])
def test_forward_grouped_and_experts_equal_the_dequantised_weight(fmt):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=gen) * 0.06
    mod = _filled(fmt, w)
    dense = mod.quantized().dequantize()
    x = torch.randn(5, 256, generator=gen)
    assert torch.equal(mod(x), F.linear(x, dense))
    xg = torch.randn(5, 2, 256, generator=gen)
    per_group = torch.stack([F.linear(xg[:, j], dense[32 * j:32 * (j + 1)]) for j in range(2)], 1)  # one tile each
    assert torch.equal(mod.grouped(xg), per_group)
    assert torch.allclose(per_group, torch.einsum("ngd,grd->ngr", xg, dense.view(2, 32, 256)), atol=1e-6)
    experts = _filled(fmt, torch.randn(3, 64, 64, generator=gen) * 0.1, stack=3)
    xe = torch.randn(4, 64, generator=gen)
    stacked = experts.quantized().dequantize()
    ref = torch.cat([F.linear(xe[:1], stacked[0]), F.linear(xe[1:], stacked[2])])
    assert torch.equal(experts.experts(xe, [1, 0, 3]), ref)


def test_dense_linear_matches_nn_linear():
    ref = nn.Linear(64, 32, bias=False)
    mod = Linear(64, 32)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(mod(x), ref(x))
    assert isinstance(mod.quantized(), QuantizedWeight) and mod.quantized().fmt == "dense"


def test_to_native_swaps_linears_and_stacked_experts_on_a_meta_model():
    cfg = ModelConfig.preset("tiny")
    with torch.device("meta"):
        model = DeepseekV4(cfg)
    to_native(model, {"layers.0.attn.wq_a": ("fp8", torch.float8_e8m0fnu),
                      "layers.0.ffn.experts.w1": ("fp4", torch.float8_e8m0fnu)})
    wq_a, w1 = model.layers[0].attn.wq_a, model.layers[0].ffn.experts.w1
    assert isinstance(wq_a, Linear) and wq_a.quant == "fp8" and wq_a.weight.is_meta
    assert (wq_a.in_features, wq_a.out_features) == (64, 64)
    assert isinstance(w1, Linear) and w1.stack == 8 and tuple(w1.weight.shape) == (8, 64, 32)
    state = model.state_dict()
    assert "layers.0.ffn.experts.w1.scale" in state and "layers.0.ffn.experts.w1" not in state
    assert model.layers[1].attn.wq_a.quant is None  # only what was asked
    to_native(model, {"layers.0.attn.wq_a": ("fp8", torch.float8_e8m0fnu)})  # already native: no-op
    assert model.layers[0].attn.wq_a is wq_a
    with pytest.raises(ValueError, match="layers.0.attn_norm is not a dense linear layer"):
        to_native(model, {"layers.0.attn_norm": ("fp8", torch.float8_e8m0fnu)})
    with pytest.raises(ValueError, match="must be one of"):
        to_native(model, {"layers.0.attn.wq_b": ("bf16", torch.float32)})
