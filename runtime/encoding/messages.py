"""Message-list preparation before rendering.

`normalise` accepts the OpenAI-style extensions and validates; `merge_tool_results`,
`order_tool_results` and `drop_stale_thinking` are the reference encoder's own preprocessing
steps, which decide the rendered bytes.
"""

from __future__ import annotations

from typing import Any

from .errors import EncodingError
from .prompts import to_json
from .tokens import TASK_TOKENS

ROLES = ("system", "user", "assistant", "tool", "developer", "latest_reminder")

# Roles that end the history whose reasoning is dropped (developer counts as a user turn).
USER_ROLES = ("user", "developer")


def _text(content: Any, role: str) -> str:
    """Content as text. A list of text parts is joined with "" (OpenAI semantics: parts are one
    text), except for tool results, where the reference joins them with a blank line."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise EncodingError(f"{role} message content must be a string, a list of text parts or None, "
                            f"got {type(content).__name__}")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise EncodingError(f"{role} message has a non-text content part ({kind!r}); only text is supported")
        texts.append(part["text"])
    return ("\n\n" if role == "tool" else "").join(texts)


def _function(entry: Any, what: str) -> dict[str, Any]:
    function = entry.get("function") if isinstance(entry, dict) else None
    if not isinstance(function, dict):
        raise EncodingError(f"each {what} needs a 'function' object (OpenAI form), got {entry!r}")
    return function


def _tool_call(call: Any) -> dict[str, Any]:
    """A copy of an OpenAI tool call whose `arguments` is JSON text (dicts are dumped)."""
    function = dict(_function(call, "tool call"))
    if not isinstance(function.get("name"), str):
        raise EncodingError(f"tool call function needs a string 'name', got {function!r}")
    if isinstance(function.get("arguments"), dict):
        function["arguments"] = to_json(function["arguments"])
    return {**call, "function": function}


def normalise(message: Any) -> dict[str, Any]:
    """A validated shallow copy of one message with the OpenAI-compatible extensions applied:
    list-of-text-parts or None content, `reasoning` as alias of `reasoning_content`, dict
    tool-call arguments."""
    if not isinstance(message, dict):
        raise EncodingError(f"a message must be a dict, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise EncodingError(f"unknown message role {role!r}; expected one of {', '.join(ROLES)}")
    msg = dict(message)
    msg["content"] = _text(msg.get("content"), role)
    task = msg.get("task")
    if task is not None and task not in TASK_TOKENS:
        raise EncodingError(f"invalid task {task!r}; valid tasks are {', '.join(TASK_TOKENS)}")
    if msg.get("tools"):
        msg["tools"] = [_function(tool, "tool") for tool in msg["tools"]]
    if role == "assistant":
        alias = msg.pop("reasoning", None)
        if msg.get("reasoning_content") is None:
            msg["reasoning_content"] = alias
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_tool_call(call) for call in msg["tool_calls"]]
    return msg


def merge_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold `tool` messages and user messages into user messages made of content blocks.

    A tool result joins the user message just before it; a user text joins it too unless that
    message carries a task. Only a user message that starts a new block list keeps its `task`.
    """
    merged: list[dict[str, Any]] = []
    for msg in messages:
        role = msg["role"]
        previous = merged[-1] if merged and merged[-1]["role"] == "user" else None
        if role == "tool":
            block = {"type": "tool_result", "tool_use_id": msg.get("tool_call_id", ""), "content": msg["content"]}
            if previous is not None:
                previous["content_blocks"].append(block)
            else:
                merged.append({"role": "user", "content_blocks": [block]})
        elif role == "user":
            block = {"type": "text", "text": msg["content"]}
            if previous is not None and previous.get("task") is None:
                previous["content_blocks"].append(block)
            else:
                merged.append({"role": "user", "content_blocks": [block], "task": msg.get("task")})
        else:
            merged.append(msg)
    return merged


def _call_id(call: dict[str, Any]) -> Any:
    return call.get("id") or call["function"].get("id", "")


def order_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reorder (in place) the tool results of each user message by the position of their call id
    in the latest assistant message with tool calls; other blocks keep their slots."""
    rank: dict[Any, int] = {}
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            rank = {cid: i for i, call in enumerate(msg["tool_calls"]) if (cid := _call_id(call))}
        elif msg["role"] == "user":
            blocks = msg["content_blocks"]
            results = [b for b in blocks if b["type"] == "tool_result"]
            if len(results) > 1 and rank:
                ranked = iter(sorted(results, key=lambda b: rank.get(b["tool_use_id"], 0)))
                msg["content_blocks"] = [next(ranked) if b["type"] == "tool_result" else b for b in blocks]
    return messages


def last_user_index(messages: list[dict[str, Any]]) -> int:
    """Index of the last user or developer message, -1 if there is none."""
    return max((i for i, m in enumerate(messages) if m["role"] in USER_ROLES), default=-1)


def drop_stale_thinking(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before the last user turn: assistant messages lose their reasoning, developer messages go."""
    last = last_user_index(messages)
    kept = []
    for i, msg in enumerate(messages):
        if i >= last or msg["role"] not in ("assistant", "developer"):
            kept.append(msg)
        elif msg["role"] == "assistant":
            kept.append({k: v for k, v in msg.items() if k != "reasoning_content"})
    return kept
