"""The expressions a program appends to its state (`s += ...`).

Expressions are plain data; `interpreter.Executor` gives them meaning. `a + b` builds an
`ExprList`, and strings become `Text`, so `"A:" + gen("x")` is one expression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .sampling import SamplingParams

if TYPE_CHECKING:
    from .choices import ChoicesSamplingMethod
    from .interpreter import Executor

ROLES = ("system", "user", "assistant")
REASONING_EFFORTS = {True: None, "high": "high", "max": "max"}


class Expr:
    def __add__(self, other: "Expr | str") -> "ExprList":
        return ExprList([self, as_expr(other)])

    def __radd__(self, other: "Expr | str") -> "ExprList":
        return ExprList([as_expr(other), self])


def as_expr(value: Any) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(f"cannot append {type(value).__name__} to a program state; use a string or an sgl expression")


class ExprList(Expr):
    def __init__(self, items: list[Expr]) -> None:
        self.items = [part for item in items for part in (item.items if isinstance(item, ExprList) else [item])]

    def __repr__(self) -> str:
        return f"ExprList({self.items!r})"


@dataclass(eq=False)
class Text(Expr):
    value: str


@dataclass(eq=False)
class RoleBegin(Expr):
    role: str


@dataclass(eq=False)
class RoleEnd(Expr):
    role: str


@dataclass(eq=False)
class VarScopeBegin(Expr):
    name: str


@dataclass(eq=False)
class VarScopeEnd(Expr):
    name: str


@dataclass(eq=False)
class Gen(Expr):
    name: str | None
    overrides: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields set by this gen
    dtype: type | str | None = None
    thinking: bool | str = False  # False, True, "high" or "max" (Think Max)
    max_thinking_tokens: int | None = None
    tools: list = field(default_factory=list)  # callables, OpenAI tool dicts or `Tool`s
    tool_choice: str = "auto"  # "auto", "required" or a tool name (forces the first round's call)
    max_tool_rounds: int = 5

    def __post_init__(self) -> None:
        if self.thinking not in (False, None) and self.thinking not in REASONING_EFFORTS:
            raise ValueError(f"thinking must be False, True, 'high' or 'max', got {self.thinking!r}")

    def sampling(self, defaults: SamplingParams) -> SamplingParams:
        return defaults.override(**self.overrides).with_dtype(self.dtype)

    @property
    def thinks(self) -> bool:
        return self.thinking not in (False, None)

    @property
    def effort(self) -> str | None:
        return REASONING_EFFORTS[self.thinking] if self.thinks else None

    @property
    def is_turn(self) -> bool:
        """Whether this gen needs a whole assistant turn (reasoning or tool calls)."""
        return self.thinks or bool(self.tools)


@dataclass(eq=False)
class Select(Expr):
    name: str | None
    choices: list[str]
    method: "ChoicesSamplingMethod"


@dataclass(eq=False)
class ForkText(Expr):
    """The text a fork added after it was forked (joining forks, or `s += fork`)."""
    source: "Executor"


def defined_names(expr: Expr) -> list[str]:
    """The variables that executing `expr` sets (a reader waits for them)."""
    if isinstance(expr, ExprList):
        return [name for item in expr.items for name in defined_names(item)]
    if isinstance(expr, Gen) and expr.name:
        return [expr.name] + ([f"{expr.name}_reasoning"] if expr.thinks else [])
    if isinstance(expr, Select) and expr.name:
        return [expr.name]
    if isinstance(expr, VarScopeEnd):
        return [expr.name]
    return []


Callback = Callable[[str], None]
