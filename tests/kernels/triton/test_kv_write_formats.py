"""The paged inserts into the FP8 formats the KV cache uses beyond V4's own row shape: FP8
indexer keys (a compressor window close), and KV rows whose last scale block is short (the
tiny model's 96 no-RoPE dims), byte for byte against the torch formats."""

from __future__ import annotations

import torch

from banyan.kernels import dispatch
from banyan.kernels.kv_formats import FP8IndexerKeys, FP8KVCache, KVRowFormat
from banyan.kernels.rope import rope_inv_freq, rope_table


def _table(positions: list[int], rope_dim: int) -> torch.Tensor:
    return rope_table(torch.tensor(positions), rope_inv_freq(rope_dim, 160000.0, 16.0))


def _window(gen: torch.Generator, entries: int, slots: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.randn(entries, slots, 2, d, generator=gen) * torch.tensor([1.0, 30.0, 1e-3])[:, None, None, None]
    return rows[:, :, 0], rows[:, :, 1]


def test_compress_close_into_fp8_indexer_keys(backend, gen):
    kv, score = _window(gen, 3, 8, 128)
    weight = torch.rand(128, generator=gen) + 0.5
    slots = torch.tensor([33, -1, 2])
    keys = FP8IndexerKeys.empty(rows=40, block_rows=32, dim=128)
    dispatch.compress_close(kv, score, weight, 1e-6, _table([0, 4, 8], 64), keys, slots)
    reference = FP8IndexerKeys.empty(rows=40, block_rows=32, dim=128)
    with dispatch_backend("torch"):
        dispatch.compress_close(kv, score, weight, 1e-6, _table([0, 4, 8], 64), reference, slots)
    assert reference.data[0, 2 * 128:3 * 128].any()  # the reference wrote row 2
    assert torch.equal(keys.data, reference.data)


def test_inserts_into_rows_with_a_short_last_scale_block(backend, gen):
    fmt = KVRowFormat(dim=128, rope_dim=32)
    kv = torch.randn(3, 128, generator=gen) * torch.tensor([1.0, 1e3, 1e-3])[:, None]
    kv[:, 96:] *= 10  # RoPE dims above the no-RoPE ones: the short block's amax must leave them out
    weight = torch.rand(128, generator=gen) + 0.5
    slots = torch.tensor([70, -1, 5])
    caches = {}
    for name in ("torch", backend):
        with dispatch_backend(name):
            cache = FP8KVCache.empty(80, page_rows=64, fmt=fmt)
            dispatch.kv_insert(kv, weight, 1e-6, _table([3, 4, 5], 32), cache, slots)
            win, score = _window(gen.manual_seed(5), 3, 8, 128)
            win[..., 96:] *= 10
            dispatch.compress_close(win, score, weight, 1e-6, _table([0, 4, 8], 32), cache, torch.tensor([1, 2, -1]))
            caches[name] = cache
    assert caches["torch"].data[1].any() and caches["torch"].data[0, 64 * 160:].any()
    assert torch.equal(caches[backend].data, caches["torch"].data)


class dispatch_backend:  # noqa: N801 (a context manager named for what it sets)
    """Run the block under `BANYAN_KERNELS=name`, then restore the setting."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        import os

        self.saved = os.environ.get(dispatch.ENV)
        os.environ[dispatch.ENV] = self.name

    def __exit__(self, *exc) -> None:
        import os

        if self.saved is None:
            os.environ.pop(dispatch.ENV, None)
        else:
            os.environ[dispatch.ENV] = self.saved
