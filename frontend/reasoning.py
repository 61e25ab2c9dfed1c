"""Forked reasoning: sample several thinking branches from one shared prefix and aggregate them.

Every branch is a fork of the state, so the prompt is computed once and cached (the forks'
requests report it in `cached_tokens`), and the branches generate in parallel.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from .api import assistant, gen
from .ir import Expr, as_expr
from .program import Function
from .state import ForkGroup, ProgramState


def branches(s: ProgramState, n: int, name: str = "answer", *, thinking: bool | str = True,
             temperature: float = 0.8, seed: int | None = None, **gen_kwargs: Any) -> ForkGroup:
    """`n` forks of `s`, each generating `name` (with reasoning by default) where `s` stands: in
    an open assistant block, or in a new one after a user turn. Branch `i` samples
    with `seed + i` when a seed is given. Read `forks[i][name]` (and `[name + "_reasoning"]`)."""
    forks = s.fork(n)
    for i, fork in enumerate(forks):
        fork += _in_place(s, gen(name, thinking=thinking, temperature=temperature,
                                 seed=None if seed is None else seed + i, **gen_kwargs))
    return forks


def _in_place(s: ProgramState, expr: Expr | str) -> Expr:
    """`expr` where `s` stands: as is in free text or an open assistant block, else as a new
    assistant block (after a user turn)."""
    conversation = s._executor.conversation
    return as_expr(expr) if not conversation.is_chat or conversation.role == "assistant" else assistant(expr)


def majority_vote(answers: list[str], key: Callable[[str], Any] = str.strip) -> str:
    """The first answer of the most common `key(answer)` group (ties: the group seen first)."""
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts = Counter(key(a) for a in answers)
    best = max(counts, key=counts.__getitem__)  # Counter keeps first-seen order among equal counts
    return next(a for a in answers if key(a) == best)


def self_consistency(s: ProgramState, n: int, name: str = "answer", *, key: Callable[[str], Any] = str.strip,
                     judge: Function | None = None, **branch_kwargs: Any) -> str:
    """Sample `n` thinking branches of `name` (see `branches`) and keep one: by majority vote over
    `key(answer)`, or by a `judge` program `judge(s, candidates)` that stores its pick in its
    variable "best" (e.g. with `sgl.select("best", choices=candidates)`). The pick is appended
    to `s` and stored in `s[name]`; all answers in `s[name + "_candidates"]`."""
    forks = branches(s, n, name, **branch_kwargs)
    candidates = [fork[name] for fork in forks]
    if judge is None:
        best = majority_vote(candidates, key)
    else:
        best = judge.run(candidates=candidates, backend=s._executor.backend)["best"]
        if best not in candidates:
            raise ValueError(f"the judge picked {best!r}, which is not one of the candidates")
    s[f"{name}_candidates"] = candidates
    s[name] = best
    s += _in_place(s, best)
    return best
