"""How many intra-op threads a model process uses on CPU.

A narrow model (the embedded tiny one, every test checkpoint) is bound by the count of small
ops, not by arithmetic: a decode step is ~2,000 ops of a few microseconds. Splitting such an
op over threads saves less than waking the other threads costs, and under
`OMP_WAIT_POLICY=PASSIVE` (what the Engine runs with, so that spinning threads never stall a
busy machine) every parallel op wakes them. Measured on 2 cores, tiny model, PASSIVE, one
thread against two: decode at batch 1 / 16 / 64 17 / 29 / 72 ms against 29 / 60 / 99 ms,
4,096-token prefill 1.26 s against 1.55 s, and one thread also wins with a busy neighbour.
So such models run on one thread; wide models, whose matmuls are worth splitting, keep
torch's default of one thread per core. `--cpu-threads` overrides either.
"""

from __future__ import annotations

import torch

SPLIT_MIN_HIDDEN = 1024  # hidden sizes from which ops are worth splitting (V4-Flash: 4096)


def cpu_threads(hidden_size: int, requested: int = 0) -> int:
    """`requested` when > 0; else 1 for a model narrower than `SPLIT_MIN_HIDDEN`, else torch's
    current thread count. The benchmarks give their transformers baselines the same count."""
    if requested > 0:
        return requested
    return 1 if hidden_size < SPLIT_MIN_HIDDEN else torch.get_num_threads()
