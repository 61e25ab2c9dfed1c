"""The language's public functions, with SGLang's names and argument order."""

from __future__ import annotations

import re
from typing import Any, Callable

from .backends.base import Backend
from .choices import ChoicesSamplingMethod, token_length_normalized
from .config import global_config
from .errors import UnsupportedFeatureError
from .ir import Expr, ExprList, Gen, RoleBegin, RoleEnd, Select, as_expr
from .program import Function
from .tools import as_tool


def function(func: Callable[..., Any] | None = None) -> Function | Callable[[Callable[..., Any]], Function]:
    """`@sgl.function` (or `@sgl.function()`): make `func(s, ...)` a program."""
    return Function(func) if func is not None else Function


def set_default_backend(backend: Backend) -> None:
    global_config.default_backend = backend


def flush_cache(backend: Backend | None = None) -> bool:
    """Drop the backend's prefix cache; False when it cannot (requests in flight, no cache)."""
    backend = backend or global_config.default_backend
    return backend.flush_cache() if backend is not None else False


def get_server_info(backend: Backend | None = None) -> dict[str, Any] | None:
    backend = backend or global_config.default_backend
    return backend.get_server_info() if backend is not None else None


def gen(name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None, n: int | None = None,
        stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
        stop_regex: str | list[str] | None = None, temperature: float | None = None, top_p: float | None = None,
        top_k: int | None = None, min_p: float | None = None, frequency_penalty: float | None = None,
        presence_penalty: float | None = None, ignore_eos: bool | None = None, return_logprob: bool | None = None,
        logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool | None = None, dtype: type | str | None = None,
        choices: list[str] | None = None, choices_method: ChoicesSamplingMethod | None = None,
        regex: str | None = None, json_schema: str | dict | None = None, *, seed: int | None = None,
        thinking: bool | str = False, max_thinking_tokens: int | None = None, tools: list | None = None,
        tool_choice: str = "auto", max_tool_rounds: int = 5) -> Expr:
    """Generate text into variable `name`. Unset sampling arguments take the run's defaults.

    `choices` makes it a `select`; `regex`, `json_schema` (a dict or JSON text) or `dtype` (int,
    float, str, bool) constrain the output. At the start of an assistant block it is a V4 turn:
    `thinking` (True, "high" or "max") reasons first (`s[name + "_reasoning"]`, at most
    `max_thinking_tokens`, default `max_tokens`, then the answer gets `max_tokens`); `tools`
    (functions, OpenAI tool dicts, `Tool`s) may be called, `tool_choice` ("required" or a name)
    forces the first call, and up to `max_tool_rounds` rounds of calls run.
    """
    if choices:
        return select(name, choices, 0.0 if temperature is None else temperature,
                      choices_method or token_length_normalized)
    if n not in (None, 1):
        raise UnsupportedFeatureError("gen(n > 1) is not supported; use s.fork(n) for several samples")
    if regex is not None:
        re.compile(regex)
    overrides = dict(max_new_tokens=max_tokens, min_new_tokens=min_tokens, stop=stop, stop_token_ids=stop_token_ids,
                     stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                     frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
                     return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                     top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs,
                     regex=regex, json_schema=json_schema, seed=seed)
    if tool_choice not in ("auto", "required") and tool_choice not in [as_tool(t).name for t in tools or []]:
        raise ValueError(f"tool_choice must be 'auto', 'required' or the name of one of the tools, got {tool_choice!r}")
    return Gen(name, overrides, dtype, thinking, max_thinking_tokens, list(tools or []), tool_choice, max_tool_rounds)


def gen_int(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> Expr:
    return gen(name, max_tokens, dtype=int, **kwargs)


def gen_string(name: str | None = None, max_tokens: int | None = None, **kwargs: Any) -> Expr:
    return gen(name, max_tokens, dtype=str, **kwargs)


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> Expr:
    """Append the choice the model scores best (by `choices_method`) and store it in `name`."""
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    if temperature > 1e-5:
        raise ValueError("select decides by logprobs; only temperature 0 is supported")
    return Select(name, list(choices), choices_method)


def _role(role: str, expr: Expr | str | None) -> ExprList:
    return ExprList([RoleBegin(role)] + ([as_expr(expr)] if expr is not None else []) + [RoleEnd(role)])


def system(expr: Expr | str | None = None) -> ExprList:
    return _role("system", expr)


def user(expr: Expr | str | None = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: Expr | str | None = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> Expr:
    return RoleBegin("system")


def system_end() -> Expr:
    return RoleEnd("system")


def user_begin() -> Expr:
    return RoleBegin("user")


def user_end() -> Expr:
    return RoleEnd("user")


def assistant_begin() -> Expr:
    return RoleBegin("assistant")


def assistant_end() -> Expr:
    return RoleEnd("assistant")
