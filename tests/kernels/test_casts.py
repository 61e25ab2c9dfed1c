import torch

from banyan.kernels.casts import cast, fp32


def test_a_no_op_cast_returns_the_same_tensor() -> None:
    x = torch.randn(3, 4)
    assert cast(x, torch.float32) is x
    assert fp32(x) is x


def test_a_real_cast_converts_and_keeps_values() -> None:
    x = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    y = fp32(x)
    assert y.dtype == torch.float32 and y is not x
    assert y.tolist() == [1.5, -2.25, 3.0]
    z = cast(y, torch.bfloat16)
    assert z.dtype == torch.bfloat16 and torch.equal(z, x)
