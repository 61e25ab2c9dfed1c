"""Fixed prompt texts of the V4 format: the tools section, the response-format section and the
Think Max preamble. The wording is DeepSeek's and must not change by a single byte."""

from __future__ import annotations

import json
from typing import Any

from .tokens import DSML, THINK_CLOSE, THINK_OPEN

REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

_TOOLS_HEAD = f"""## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK_OPEN}), you MUST output your complete reasoning inside {THINK_OPEN}...{THINK_CLOSE} BEFORE any tool calls or final response.

Otherwise, output directly after {THINK_CLOSE} with tool calls or final response.

### Available Tool Schemas

"""

_TOOLS_TAIL = "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"

_RESPONSE_FORMAT_HEAD = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"


def to_json(value: Any) -> str:
    """JSON text as the format writes it everywhere: non-ASCII characters kept verbatim."""
    return json.dumps(value, ensure_ascii=False)


def tools_section(functions: list[dict[str, Any]]) -> str:
    """The tools section: the DSML usage text, then one JSON function schema per line."""
    return _TOOLS_HEAD + "\n".join(to_json(f) for f in functions) + _TOOLS_TAIL


def response_format_section(response_format: Any) -> str:
    """The section asking the model to follow `response_format` (dumped as JSON)."""
    return _RESPONSE_FORMAT_HEAD + to_json(response_format)
