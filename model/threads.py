"""How many intra-op threads a model process uses on CPU, step by step.

A narrow model (the embedded tiny one, every test checkpoint) is bound by the count of small
ops, not by arithmetic: a decode step is ~2,000 ops of a few microseconds. Splitting such an
op over threads saves less than waking the other threads costs, and under
`OMP_WAIT_POLICY=PASSIVE` (what the Engine runs with, so that spinning threads never stall a
busy machine) every parallel op wakes them. Only long-context prefill, where the indexer
scores every compressed entry for every query, has ops worth splitting. Measured in one
process on 2 cores, tiny model, PASSIVE, one thread against two: decode at 1K / 8K / 32K
tokens of context 10.3 / 12.5 / 13.1 ms against 20.1 / 18.2 / 20.4 ms; a 1,024-token prefill
from 0 189 against 258 ms; a 4,096-token chunk after 28K tokens 4.20 against 3.92 s.

So a narrow model's step runs on one thread unless it attends to `PARALLEL_MIN_ATTENDED`
query-key pairs (new tokens times context, summed over requests), and then on all of them;
a wide model, whose matmuls are worth splitting, always uses all. `--cpu-threads N` fixes N.
The benchmarks run their transformers baselines by the same rule.
"""

from __future__ import annotations

import torch

from ..kernels import native

SPLIT_MIN_HIDDEN = 1024  # hidden sizes from which every step's ops are worth splitting (V4-Flash: 4096)
PARALLEL_MIN_ATTENDED = 1 << 25  # e.g. a 4,096-token chunk after 4K tokens, or 1,024 tokens after 31K
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (one per core, or OMP_NUM_THREADS)


def step_threads(hidden_size: int, attended: int, requested: int = 0) -> int:
    """Threads for a step that attends to `attended` query-key pairs: `requested` when > 0,
    else all of them for wide models and big steps, else 1."""
    if requested > 0:
        return requested
    wide = hidden_size >= SPLIT_MIN_HIDDEN or attended >= PARALLEL_MIN_ATTENDED
    return DEFAULT_THREADS if wide else 1


def use_threads(hidden_size: int, attended: int, requested: int = 0) -> None:
    """Set torch's intra-op thread count for such a step (a no-op when it already is that)."""
    n = step_threads(hidden_size, attended, requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


_process_rule: tuple[int, int] | None = None  # (hidden size, requested) once configured


def configure(hidden_size: int, requested: int = 0) -> None:
    """Make this process pick its CPU threads per step (the Engine's model processes do)."""
    global _process_rule
    _process_rule = (hidden_size, requested)
    native.set_max_threads(requested or DEFAULT_THREADS)


def describe() -> str:
    """This process's rule, for its start-up log line."""
    if _process_rule is None:
        return f"{torch.get_num_threads()} (not chosen per step)"
    hidden, requested = _process_rule
    if requested or hidden >= SPLIT_MIN_HIDDEN:
        return str(step_threads(hidden, 0, requested))
    return f"1 per step, {DEFAULT_THREADS} for steps attending to >= 2^{PARALLEL_MIN_ATTENDED.bit_length() - 1} pairs"


def for_step(attended: int) -> None:
    """Set this step's thread count; without `configure` (a model used directly), leave torch's."""
    if _process_rule is not None:
        use_threads(_process_rule[0], attended, _process_rule[1])
