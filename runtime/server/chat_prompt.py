"""Chat request -> V4 prompt: reasoning mode, tools, tool_choice and the grammar they imply.

Reasoning mode, first match wins:
- an explicit switch: `chat_template_kwargs.thinking` / `.enable_thinking` (bool) or
  DeepSeek's `thinking: {"type": "enabled" | "disabled"}`;
- `reasoning_effort` (top level or in `chat_template_kwargs`): `none` -> non-think, any other
  accepted value -> thinking (`max` adds the Think Max prefix);
- the server default (`--default-thinking`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...scheduler.grammar import GrammarSpec, tool_call_grammar
from ..encoding import EncodingError, encode_messages
from ..tokenizer import SPECIAL_IDS
from .errors import invalid
from .models import ChatCompletionRequest
from .params import response_format_grammar

EFFORTS = {"none": None, "minimal": "high", "low": "high", "medium": "high", "high": "high", "xhigh": "high",
           "max": "max"}


@dataclass
class ChatPrompt:
    text: str
    thinking: bool
    parse_tools: bool  # DSML tool calls in the output become `tool_calls`
    grammar: GrammarSpec | None


def _explicit_thinking(req: ChatCompletionRequest) -> bool | None:
    kwargs = req.chat_template_kwargs or {}
    for key in ("thinking", "enable_thinking"):
        if key in kwargs:
            if not isinstance(kwargs[key], bool):
                raise invalid(f"chat_template_kwargs.{key} must be a boolean", f"chat_template_kwargs.{key}")
            return kwargs[key]
    if req.thinking is not None:
        kind = req.thinking.get("type")
        if kind not in ("enabled", "disabled"):
            raise invalid("thinking.type must be 'enabled' or 'disabled'", "thinking.type")
        return kind == "enabled"
    return None


def reasoning_mode(req: ChatCompletionRequest, default_thinking: bool) -> tuple[bool, str | None]:
    """(thinking, reasoning_effort for the encoder: None | "high" | "max")."""
    effort = req.reasoning_effort or (req.chat_template_kwargs or {}).get("reasoning_effort")
    if effort is not None and (not isinstance(effort, str) or effort not in EFFORTS):
        raise invalid(f"reasoning_effort must be one of {', '.join(EFFORTS)}, got {effort!r}", "reasoning_effort")
    explicit = _explicit_thinking(req)
    if explicit is not None:
        thinking = explicit
    elif effort is not None:
        thinking = effort != "none"
    else:
        thinking = default_thinking
    return thinking, (EFFORTS[effort] if thinking and effort else None)


def _check_tools(tools: list[dict]) -> list[str]:
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name or tool.get("type", "function") != "function":
            raise invalid(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", f"tools[{i}]")
        names.append(name)
    return names


def _forced_tool(req: ChatCompletionRequest, names: list[str]) -> tuple[bool, str | None]:
    """(a tool call is forced, the forced function's name or None for any)."""
    choice = req.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not name:
            raise invalid("tool_choice must be none, auto, required or {'type': 'function', 'function': "
                          "{'name': ...}}", "tool_choice")
        if name not in names:
            raise invalid(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
        return True, name
    if choice == "required":
        if not names:
            raise invalid("tool_choice 'required' needs a non-empty tools list", "tool_choice")
        return True, None
    return False, None


def _with_tools(messages: list[dict], tools: list[dict]) -> list[dict]:
    """Attach request-level tools to the first system message (or a new one), as V4 expects."""
    messages = [dict(m) for m in messages]
    for m in messages:
        if m.get("role") == "system":
            m["tools"] = tools
            return messages
    return [{"role": "system", "content": "", "tools": tools}] + messages


def build_chat_prompt(req: ChatCompletionRequest, default_thinking: bool) -> ChatPrompt:
    thinking, effort = reasoning_mode(req, default_thinking)
    tools = req.tools or []
    names = _check_tools(tools)
    if req.tool_choice not in (None, "none", "auto") and not isinstance(req.tool_choice, dict) and not tools:
        raise invalid("tool_choice needs tools", "tool_choice")
    use_tools = bool(tools) and req.tool_choice != "none"
    forced, name = _forced_tool(req, names) if use_tools else (False, None)
    messages = _with_tools(req.messages, tools) if use_tools else list(req.messages)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise invalid(f"messages[{i}] needs a role", f"messages[{i}]")
    try:
        text = encode_messages(messages, "thinking" if thinking else "chat", reasoning_effort=effort)
    except EncodingError as exc:
        raise invalid(str(exc), "messages") from None
    start_after = SPECIAL_IDS["end_think"] if thinking else None
    if forced:
        grammar = tool_call_grammar(tools, required_name=name, start_after=start_after)
    else:
        grammar = response_format_grammar(req.response_format, start_after)
    return ChatPrompt(text, thinking, use_tools, grammar)
