import math

import torch

from banyan.kernels.rope import apply_rope_, rope_inv_freq, rope_table
from banyan.model.config import ModelConfig


def test_yarn_frequencies_match_spec_and_transformers():
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding

    flash = ModelConfig.preset("flash")
    raw = flash.to_hf_dict()
    hf = DeepseekV4RotaryEmbedding(DeepseekV4Config(**{k: v for k, v in raw.items()
                                                       if k not in ("architectures", "model_type")}))
    ours = rope_inv_freq(64, 160000.0, yarn_factor=16, original_max_position=65536)
    assert torch.allclose(ours, hf.compress_inv_freq, rtol=1e-6, atol=0)
    assert torch.allclose(rope_inv_freq(64, 10000.0), hf.main_inv_freq, rtol=1e-6, atol=0)
    plain = rope_inv_freq(64, 160000.0)
    # spec §5.3: low = 15, high = 25 -> pairs up to 15 keep their frequency, from 25 on divided by 16
    assert torch.equal(ours[:16], plain[:16])
    assert torch.allclose(ours[25:], plain[25:] / 16)
    assert ((ours[16:25] < plain[16:25]) & (ours[16:25] > plain[16:25] / 16)).all()


def test_interleaved_rotation_and_inverse():
    x = torch.randn(5, 3, 16)
    table = rope_table(torch.arange(5) * 7, rope_inv_freq(8, 10000.0))
    y = apply_rope_(x.clone(), table)
    assert torch.equal(y[..., :8], x[..., :8])  # only the trailing dims rotate
    # pair (8, 9) of token 1 rotates by angle 7 * theta^0 = 7
    c, s = math.cos(7), math.sin(7)
    assert torch.allclose(y[1, :, 8], x[1, :, 8] * c - x[1, :, 9] * s, atol=1e-6)
    assert torch.allclose(y[1, :, 9], x[1, :, 8] * s + x[1, :, 9] * c, atol=1e-6)
    assert torch.allclose(apply_rope_(y.clone(), table.conj()), x, atol=1e-5)
    # bf16 rotates in fp32 and rounds once
    yb = apply_rope_(x.bfloat16(), table)
    assert torch.equal(yb, apply_rope_(x.bfloat16().float(), table).bfloat16())
    # relative: <rope(q, t), rope(k, j)> depends only on t - j
    q, k = torch.randn(16), torch.randn(16)

    def dot(t, j):
        r = apply_rope_(torch.stack([q, k]), rope_table(torch.tensor([t, j]), rope_inv_freq(8, 10000.0)))
        return (r[0, 8:] @ r[1, 8:]).item()
    assert abs(dot(10, 3) - dot(107, 100)) < 1e-4
