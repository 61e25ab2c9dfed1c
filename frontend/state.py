"""`ProgramState` (the `s` a program writes to) and `ForkGroup` (what `s.fork(n)` returns)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .interpreter import Executor
from .ir import Expr, ExprList, ForkText, RoleBegin, RoleEnd, VarScopeBegin, VarScopeEnd, as_expr


class ProgramState:
    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    # --- writing ---------------------------------------------------------------------------------

    def __iadd__(self, other: "Expr | str | ProgramState") -> "ProgramState":
        """Append text or an expression; a fork appends the text it added after it was forked."""
        self._executor.submit(ForkText(other._executor) if isinstance(other, ProgramState) else as_expr(other))
        return self

    def _role(self, role: str, expr: "Expr | str | None"):
        if expr is not None:
            self._executor.submit(ExprList([RoleBegin(role), as_expr(expr), RoleEnd(role)]))
            return None

        @contextmanager
        def block() -> Iterator[None]:
            self._executor.submit(RoleBegin(role))
            yield
            self._executor.submit(RoleEnd(role))

        return block()

    def system(self, expr: "Expr | str | None" = None):
        """`s.system("...")` appends a system block; `with s.system():` opens one."""
        return self._role("system", expr)

    def user(self, expr: "Expr | str | None" = None):
        return self._role("user", expr)

    def assistant(self, expr: "Expr | str | None" = None):
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """The text appended inside the block becomes variable `name`."""
        self._executor.submit(VarScopeBegin(name))
        yield
        self._executor.submit(VarScopeEnd(name))

    def fork(self, size: int = 1) -> "ForkGroup":
        """`size` copies of this state that continue independently (and in parallel); the prefix so
        far is cached first, so their requests reuse it."""
        return ForkGroup([ProgramState(e) for e in self._executor.fork(size)], self)

    # --- reading ---------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._executor.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self._executor.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._executor.variables

    def get_var(self, name: str) -> Any:
        return self._executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self._executor.set_var(name, value)

    def get_meta_info(self, name: str) -> dict[str, Any] | None:
        """The backend's meta_info of the gen/select that set `name` (token counts, `cached_tokens`,
        `finish_reason`, logprobs; select: the scores; tool gens: `tool_rounds`, `tool_calls`)."""
        return self._executor.get_meta_info(name)

    def text(self) -> str:
        self._executor.sync()
        return self._executor.conversation.text()

    def messages(self) -> list[dict[str, Any]]:
        """The completed role blocks as OpenAI chat messages (with `reasoning_content`,
        `tool_calls` and `tool` messages where the program produced them)."""
        self._executor.sync()
        return self._executor.conversation.chat_messages()

    def sync(self) -> None:
        self._executor.sync()

    def error(self) -> Exception | None:
        self._executor.drain()
        return self._executor.error

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """The text (or variable `var_name`) as it grows: new pieces while a `stream=True` run
        generates, the whole value at once otherwise. Only appended text is yielded."""
        executor = self._executor
        if not executor.stream:
            yield self.text() if var_name is None else self[var_name]
            return
        sent, version = 0, -1
        while True:
            version = executor.wait_change(version)
            done = executor.finished if var_name is None else executor.var_done(var_name) or executor.finished
            value = executor.conversation.text() if var_name is None else executor.variables.get(var_name, "")
            if len(value) > sent:
                yield value[sent:]
                sent = len(value)
            if done:
                break
        if executor.error is not None:
            raise executor.error

    def __del__(self) -> None:
        self._executor.end()

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ForkGroup(Sequence[ProgramState]):
    def __init__(self, states: list[ProgramState], source: ProgramState) -> None:
        self.states, self.source = states, source

    def __getitem__(self, index: int) -> ProgramState:
        return self.states[index]

    def __setitem__(self, index: int, state: ProgramState) -> None:
        """`forks[i] += ...` assigns the (same) state back."""
        if state is not self.states[index]:
            raise ValueError("a fork group's states cannot be replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iadd__(self, other: "Callable[[int], Expr | str] | Sequence[Expr | str] | Expr | str") -> "ForkGroup":
        """Append to every fork: the same expression, one per fork (a list), or `f(i)`."""
        for i, state in enumerate(self.states):
            state += other(i) if callable(other) else other[i] if isinstance(other, (list, tuple)) else other
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for the forks and bring their results into the source state, as SGLang does:
        `gather_variable` sets each variable the forks created to the list of their values;
        `concate_and_append` appends each fork's new text to the source, in order."""
        if mode == "gather_variable":
            known = set(self.source._executor.variables)
            gathered: dict[str, list] = {}
            for state in self.states:
                state.sync()
                for name, value in state._executor.variables.items():
                    if name not in known:
                        gathered.setdefault(name, []).append(value)
            for name, values in gathered.items():
                self.source[name] = values
        elif mode == "concate_and_append":
            self.source += ExprList([ForkText(state._executor) for state in self.states])
            self.source.sync()
        else:
            raise ValueError(f"invalid join mode {mode!r}; expected gather_variable or concate_and_append")
        for state in self.states:
            state._executor.end()
