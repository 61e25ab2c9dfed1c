"""DSML, the markup of V4 tool calls: rendering calls into it and building the JSON `arguments`
string from parsed parameters. Both parsers build arguments only through the helpers here."""

from __future__ import annotations

import json
from typing import Any

from .errors import EncodingError
from .prompts import to_json
from .tokens import INVOKE_CLOSE, INVOKE_OPEN, PARAM_CLOSE, PARAM_OPEN, TOOL_CALLS_CLOSE, TOOL_CALLS_MARKER


def _arguments_object(arguments: Any) -> dict[str, Any]:
    """The arguments as a JSON object. Text that is not JSON becomes `{"arguments": text}`, as the
    reference encoder does; JSON that is not an object is rejected."""
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        value = {"arguments": arguments}
    if not isinstance(value, dict):
        raise EncodingError(f"tool call arguments must be a JSON object, got {arguments!r}")
    return value


def _render_parameter(key: str, value: Any) -> str:
    is_string = isinstance(value, str)
    body = value if is_string else to_json(value)
    return f'{PARAM_OPEN} name="{key}" string="{"true" if is_string else "false"}">{body}{PARAM_CLOSE}'


def render_tool_calls(calls: list[tuple[str, Any]]) -> str:
    """The block an assistant turn ends with, for `(name, arguments JSON text)` pairs."""
    invokes = []
    for name, arguments in calls:
        params = "\n".join(_render_parameter(k, v) for k, v in _arguments_object(arguments).items())
        invokes.append(f'{INVOKE_OPEN} name="{name}">\n{params}\n{INVOKE_CLOSE}')
    return TOOL_CALLS_MARKER + "\n" + "\n".join(invokes) + "\n" + TOOL_CALLS_CLOSE


# --- arguments JSON, piece by piece: '{"k": ' value ', "k2": ' value '}' ----------------------------

def argument_key(key: str, first: bool) -> str:
    """The text that precedes a parameter's value."""
    return ("{" if first else ", ") + to_json(key) + ": "


def string_body(text: str) -> str:
    """`text` JSON-escaped without the quotes. Escaping is per character, so escaping pieces of a
    string and joining them equals escaping the whole string."""
    return to_json(text)[1:-1]


def close_arguments(has_params: bool) -> str:
    """The text that ends the arguments object."""
    return "}" if has_params else "{}"


def arguments_json(params: list[tuple[str, str, bool]]) -> str:
    """Arguments for `(key, raw value, is_string)` parameters: strings are JSON-quoted, other values
    are inserted verbatim (the model wrote them as JSON)."""
    parts = [argument_key(key, i == 0) + (f'"{string_body(value)}"' if is_string else value)
             for i, (key, value, is_string) in enumerate(params)]
    return "".join(parts) + close_arguments(bool(params))
