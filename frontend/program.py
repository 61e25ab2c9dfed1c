"""`Function`: a program (`@sgl.function`) and how it runs: once, streamed, or over a batch."""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import tqdm

from .backends.base import Backend
from .config import global_config
from .interpreter import Executor
from .sampling import DEFAULT_NAMES, SamplingParams
from .state import ProgramState


def _backend(backend: Backend | None) -> Backend:
    backend = backend or global_config.default_backend
    if backend is None:
        raise RuntimeError("no backend: pass backend= or call sgl.set_default_backend(...)")
    return backend


class Function:
    def __init__(self, func: Callable[..., Any], bind_arguments: dict[str, Any] | None = None) -> None:
        names = list(inspect.signature(func).parameters)
        if not names:
            raise TypeError(f"{func.__name__} must take the program state as its first argument")
        self.func = func
        self.arg_names = names[1:]
        self.bind_arguments = dict(bind_arguments or {})
        functools.update_wrapper(self, func)

    def bind(self, **arguments: Any) -> "Function":
        """A copy with some arguments fixed."""
        unknown = set(arguments) - set(self.arg_names)
        if unknown:
            raise TypeError(f"{self.func.__name__} has no argument {', '.join(sorted(unknown))}")
        return Function(self.func, {**self.bind_arguments, **arguments})

    def run(self, *args: Any, stream: bool = False, backend: Backend | None = None, **kwargs: Any) -> ProgramState:
        """Run the program. Keyword arguments named like sampling parameters (`temperature`,
        `max_new_tokens`, `stop`, ...) are defaults for its gens; the others are its arguments.
        With `stream=True` it returns at once and runs on a thread (read it with `text_iter`)."""
        defaults = SamplingParams().override(**{k: v for k, v in kwargs.items() if k in DEFAULT_NAMES})
        arguments = {**self.bind_arguments, **{k: v for k, v in kwargs.items() if k not in DEFAULT_NAMES}}
        executor = Executor(_backend(backend), defaults, stream)
        state = ProgramState(executor)
        if not stream:
            self._execute(state, args, arguments)
            executor.sync()
            return state

        def run_streamed() -> None:
            try:
                self._execute(state, args, arguments)
            except Exception as exc:  # the reader sees it in text_iter / state[...]
                executor.fail(exc)

        threading.Thread(target=run_streamed, daemon=True, name=f"banyan-frontend-{self.func.__name__}").start()
        return state

    def _execute(self, state: ProgramState, args: tuple, arguments: dict[str, Any]) -> None:
        try:
            state.ret_value = self.func(state, *args, **arguments)
        finally:
            state._executor.end()

    def run_batch(self, batch_arguments: list[dict[str, Any]] | list[list | tuple], *,
                  backend: Backend | None = None, num_threads: int | str = "auto", progress_bar: bool = False,
                  generator_style: bool = False, **sampling: Any) -> list[ProgramState] | Iterator[ProgramState]:
        """Run the program once per argument dict (or positional list), `num_threads` at a time;
        the requests of concurrent programs share cached prefixes on the server."""
        unknown = set(sampling) - DEFAULT_NAMES
        if unknown:
            raise TypeError(f"run_batch got unknown sampling parameters: {', '.join(sorted(unknown))}")
        batch = [a if isinstance(a, dict) else dict(zip(self.arg_names, a)) for a in batch_arguments]
        if not batch:
            return []
        if num_threads == "auto":
            num_threads = max(96, multiprocessing.cpu_count() * 16)
        backend = _backend(backend)
        bar = tqdm.tqdm(total=len(batch)) if progress_bar else None
        pool = ThreadPoolExecutor(min(int(num_threads), len(batch)))
        futures: list[Future] = []
        for arguments in batch:
            futures.append(pool.submit(self.run, backend=backend, **sampling, **arguments))
            if bar is not None:
                futures[-1].add_done_callback(lambda _: bar.update())

        def results() -> Iterator[ProgramState]:
            try:
                for future in futures:
                    yield future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                if bar is not None:
                    bar.close()

        return results() if generator_style else list(results())

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)
