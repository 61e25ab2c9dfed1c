"""`parse_message_from_completion_text`: the strict parser, accepting exactly what DeepSeek's
reference parser accepts (quirks included) and raising `EncodingError` on everything else.
Production code parses generations with the lenient `parse_completion` instead."""

from __future__ import annotations

import re
from typing import Any

from .dsml import arguments_json
from .errors import EncodingError
from .render import is_thinking
from .tokens import BOS, DSML, EOS, INVOKE_OPEN, PARAM_OPEN, THINK_CLOSE, THINK_OPEN, TOOL_CALLS_CLOSE

_BLOCK_START = f"\n\n<{DSML}tool_calls"
_INVOKE_END = f"</{DSML}invoke"
_PARAM_END = f"/{DSML}parameter"
# `$` also matches before one final newline, as in the reference.
_NAME = re.compile(r'^\s*name="(.*?)">\n$', re.DOTALL)
_PARAM = re.compile(r'^ name="(.*?)" string="(true|false)">(.*?)<$', re.DOTALL)


def _read_until(text: str, pos: int, stops: tuple[str, ...]) -> tuple[int, str, str | None]:
    """(position after the earliest stop, text before it, the stop); at the end if none occurs."""
    found = [(at, stop) for stop in stops if (at := text.find(stop, pos)) >= 0]
    if not found:
        return len(text), text[pos:], None
    at, stop = min(found, key=lambda hit: hit[0])
    return at + len(stop), text[pos:at], stop


def _expect_gap(gap: str) -> None:
    if gap != ">\n":
        raise EncodingError(f"tool call format error: expected '>\\n', got {gap!r}")


def _read_tool_calls(text: str, pos: int) -> tuple[int, list[tuple[str, str]]]:
    """Invokes from just after the block start up to the block end."""
    calls = []
    while pos < len(text):
        pos, gap, stop = _read_until(text, pos, (INVOKE_OPEN, TOOL_CALLS_CLOSE))
        _expect_gap(gap)
        if stop == TOOL_CALLS_CLOSE:
            break
        if stop is None:
            raise EncodingError("tool calls block ends without its closing tag")
        pos, header, stop = _read_until(text, pos, (PARAM_OPEN, _INVOKE_END))
        name = _NAME.match(header)
        if name is None:
            raise EncodingError(f"tool name format error: {header!r}")
        params: dict[str, tuple[str, bool]] = {}
        while stop == PARAM_OPEN:
            pos, body, _ = _read_until(text, pos, (_PARAM_END,))
            param = _PARAM.match(body)
            if param is None:
                raise EncodingError(f"parameter format error: {body!r}")
            key, flag, value = param.groups()
            if key in params:
                raise EncodingError(f"duplicate parameter name {key!r}")
            params[key] = (value, flag == "true")
            pos, gap, stop = _read_until(text, pos, (PARAM_OPEN, _INVOKE_END))
            _expect_gap(gap)
        calls.append((name.group(1), arguments_json([(k, v, s) for k, (v, s) in params.items()])))
    return pos, calls


def parse_message_from_completion_text(text: str, thinking_mode: str) -> dict[str, Any]:
    """The assistant message in `text`, a completion that ends with EOS."""
    pos, reasoning = 0, ""
    if is_thinking(thinking_mode):
        pos, reasoning, stop = _read_until(text, pos, (THINK_CLOSE, _BLOCK_START))
        if stop != THINK_CLOSE:
            raise EncodingError("invalid thinking format: missing </think>")
    pos, content, stop = _read_until(text, pos, (EOS, _BLOCK_START))
    calls: list[tuple[str, str]] = []
    if stop == _BLOCK_START:
        pos, calls = _read_tool_calls(text, pos)
        pos, trailing, stop = _read_until(text, pos, (EOS,))
        if trailing:
            raise EncodingError(f"unexpected text after tool calls: {trailing!r}")
    elif stop is None:
        raise EncodingError("invalid format: missing EOS token")
    if pos != len(text):
        raise EncodingError(f"unexpected text at the end: {text[pos:]!r}")
    for token in (BOS, EOS, THINK_OPEN, THINK_CLOSE, DSML):
        if token in content or token in reasoning:
            raise EncodingError(f"unexpected special token {token!r} in content or reasoning")
    return {
        "role": "assistant",
        "content": content,
        "reasoning_content": reasoning,
        "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls],
    }
