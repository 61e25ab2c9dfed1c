"""The output head: the native bf16 GEMV at a few rows, F.linear otherwise, the same logits."""

import pytest
import torch
import torch.nn.functional as F

from banyan.kernels import native
from banyan.model import head as head_module
from banyan.model.head import GEMV_MAX_ROWS, OutputHead


def _head(weight: torch.Tensor) -> OutputHead:
    head = OutputHead(weight.shape[1], weight.shape[0], torch.float32)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _spy_gemv(monkeypatch) -> list[int]:
    rows: list[int] = []
    real = native.bf16_gemv

    def spy(x, panels, out_features):
        rows.append(x.shape[0])
        return real(x, panels, out_features)
    monkeypatch.setattr(head_module.native, "bf16_gemv", spy)
    return rows


def test_head_runs_a_few_rows_through_the_gemv_and_more_through_linear(monkeypatch):
    if native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(500, 64, generator=gen).bfloat16().float()
    head, used = _head(weight), _spy_gemv(monkeypatch)
    for rows in (1, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1):
        x = torch.randn(rows, 64, generator=gen)
        torch.testing.assert_close(head(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert used == [1, GEMV_MAX_ROWS]


def test_head_repacks_after_its_weight_changes(monkeypatch):
    if native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(1)
    head, used = _head(torch.randn(100, 16, generator=gen).bfloat16().float()), _spy_gemv(monkeypatch)
    x = torch.randn(1, 16, generator=gen)
    head(x)
    new = torch.randn(100, 16, generator=gen).bfloat16().float()
    with torch.no_grad():
        head.weight.copy_(new)  # in place: the same storage, a new version
    torch.testing.assert_close(head(x), F.linear(x, new), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        head.weight.add_(1e-3)  # no longer bf16 values: F.linear
    torch.testing.assert_close(head(x), F.linear(x, head.weight), rtol=0, atol=0)
    assert used == [1, 1]
