"""`Executor`: runs one program state's expressions on its own worker thread.

`s += expr` only queues the expression, so the program's Python code runs ahead while requests
are in flight, and forks (each with its own worker) generate in parallel. Reading a variable
waits for the expression that sets it. The first error stops the state: later expressions are
skipped and every read raises it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from .backends.base import Backend
from .chat import Conversation
from .ir import (Expr, ExprList, ForkText, Gen, RoleBegin, RoleEnd, Select, Text, VarScopeBegin, VarScopeEnd,
                 defined_names)
from .sampling import SamplingParams
from .turns import run_turns

_END = object()


class _StreamSink:
    """Streams a gen's text into the conversation and its variables while it is generated."""

    def __init__(self, executor: "Executor", name: str | None, reasoning_name: str | None) -> None:
        self._executor, self._name, self._reasoning_name = executor, name, reasoning_name
        executor._update(lambda: executor.variables.update({n: "" for n in (name, reasoning_name) if n}))

    def content(self, delta: str) -> None:
        self._write(self._executor.conversation.append, self._name, delta)

    def reasoning(self, delta: str) -> None:
        self._write(self._executor.conversation.add_reasoning, self._reasoning_name, delta)

    def _write(self, write: Callable[[str], None], name: str | None, delta: str) -> None:
        def change() -> None:
            write(delta)
            if name:
                self._executor.variables[name] += delta
        self._executor._update(change)


class Executor:
    def __init__(self, backend: Backend, defaults: SamplingParams, stream: bool,
                 conversation: Conversation | None = None, variables: dict[str, Any] | None = None) -> None:
        self.backend, self.defaults, self.stream = backend, defaults, stream
        self.conversation = conversation or Conversation()
        self.fork_mark = self.conversation.mark()  # where this state's own text begins (forks)
        self.variables: dict[str, Any] = dict(variables or {})
        self.meta_info: dict[str, Any] = {}
        self.error: Exception | None = None
        self.finished = False  # the worker has stopped
        self._ended = False
        self._pending: set[str] = set()  # variables that queued expressions will set
        self._scopes: dict[str, int] = {}
        self._version = 0  # bumped on every change, for streaming readers
        self._cond = threading.Condition()
        self._queue: queue.Queue = queue.Queue()
        self._handlers = {ExprList: self._list, Text: self._text, RoleBegin: self._role_begin, RoleEnd: self._role_end,
                          Gen: self._gen, Select: self._select, VarScopeBegin: self._scope_begin,
                          VarScopeEnd: self._scope_end, ForkText: self._fork_text}
        threading.Thread(target=self._work, daemon=True, name="banyan-frontend-executor").start()

    # --- the program's side ----------------------------------------------------------------------

    def submit(self, expr: Expr) -> None:
        if self._ended:
            raise RuntimeError("this program state has finished; it takes no more expressions")
        with self._cond:
            self._pending.update(defined_names(expr))
        self._queue.put(expr)

    def end(self) -> None:
        """No more expressions: the worker stops once the queued ones ran."""
        if not self._ended:
            self._ended = True
            self._queue.put(_END)

    def fail(self, error: Exception) -> None:
        """Record an error raised by the program's own code (streaming runs)."""
        self._update(lambda: setattr(self, "error", self.error or error))

    def drain(self) -> None:
        """Wait until the queued expressions ran."""
        self._queue.join()

    def sync(self) -> None:
        """`drain`, then raise the state's error if there is one."""
        self.drain()
        if self.error is not None:
            raise self.error

    def get_var(self, name: str) -> Any:
        self._wait_for(name)
        return self.variables[name]

    def set_var(self, name: str, value: Any) -> None:
        self._update(lambda: self.variables.__setitem__(name, value))

    def get_meta_info(self, name: str) -> dict[str, Any] | None:
        self._wait_for(name)
        return self.meta_info.get(name)

    def fork(self, size: int) -> list["Executor"]:
        self.sync()
        text = self.conversation.text()
        if size > 1 and text:
            self.backend.cache_prefix(text)  # the forks then start from the cached prefix together
        return [Executor(self.backend, self.defaults, self.stream, self.conversation.copy(), self.variables)
                for _ in range(size)]

    def wait_change(self, version: int) -> int:
        """Block until the state changed after `version` or the worker stopped; the new version."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != version or self.finished)
            return self._version

    def var_done(self, name: str) -> bool:
        with self._cond:
            return name not in self._pending and name in self.variables

    def _wait_for(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: name not in self._pending or self.error is not None)
        if self.error is not None:
            raise self.error

    def _update(self, change: Callable[[], Any]) -> None:
        with self._cond:
            change()
            self._version += 1
            self._cond.notify_all()

    # --- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        while (expr := self._queue.get()) is not _END:
            if self.error is None:
                try:
                    self._handlers[type(expr)](expr)
                except Exception as exc:  # kept for the program's reads and for run() to raise
                    self.fail(exc)
            self._update(lambda: None)
            self._queue.task_done()
        self._update(lambda: setattr(self, "finished", True))
        self._queue.task_done()

    def _set(self, name: str | None, value: Any, meta: dict[str, Any] | None) -> None:
        def change() -> None:
            if name:
                self.variables[name], self.meta_info[name] = value, meta
                self._pending.discard(name)
        self._update(change)

    def _list(self, expr: ExprList) -> None:
        for item in expr.items:
            self._handlers[type(item)](item)

    def _text(self, expr: Text) -> None:
        self.conversation.append(expr.value)

    def _role_begin(self, expr: RoleBegin) -> None:
        self.conversation.begin(expr.role)

    def _role_end(self, expr: RoleEnd) -> None:
        self.conversation.end(expr.role)

    def _gen(self, gen: Gen) -> None:
        params = gen.sampling(self.defaults)
        reasoning_name = f"{gen.name}_reasoning" if gen.name and gen.thinks else None
        sink = _StreamSink(self, gen.name, reasoning_name) if self.stream else None
        if self.conversation.at_turn_start:
            outcome = run_turns(self.backend, self.conversation, gen, params, sink)
            if reasoning_name:
                self._set(reasoning_name, outcome.reasoning or "", outcome.meta)
            self._set(gen.name, outcome.content, outcome.meta)
            return
        if gen.is_turn:
            raise ValueError(f"gen({gen.name!r}) with thinking or tools must start an assistant block, "
                             "e.g. s += sgl.assistant(sgl.gen(...))")
        completion = self.backend.complete(self.conversation.text(), params, sink and sink.content)
        if sink is None:
            self.conversation.append(completion.text)
        self._set(gen.name, completion.text, completion.meta)

    def _select(self, select: Select) -> None:
        decision = self.backend.select(self.conversation.text(), select.choices, select.method)
        self.conversation.append(decision.decision)
        self._set(select.name, decision.decision, decision.meta_info)

    def _scope_begin(self, expr: VarScopeBegin) -> None:
        self._scopes[expr.name] = len(self.conversation.text())

    def _scope_end(self, expr: VarScopeEnd) -> None:
        self._set(expr.name, self.conversation.text()[self._scopes.pop(expr.name):], None)

    def _fork_text(self, expr: ForkText) -> None:
        fork = expr.source
        fork.sync()
        self.conversation.append(fork.conversation.since(fork.fork_mark))
