"""`encode_messages`: a message list to the exact V4 prompt text (docs/dsv4-spec.md §7.2)."""

from __future__ import annotations

from typing import Any

from .dsml import render_tool_calls
from .errors import EncodingError
from .messages import (USER_ROLES, drop_stale_thinking, last_user_index, merge_tool_results, normalise,
                       order_tool_results)
from .prompts import REASONING_EFFORT_MAX, response_format_section, tools_section
from .tokens import ASSISTANT, BOS, EOS, LATEST_REMINDER, TASK_TOKENS, THINK_CLOSE, THINK_OPEN, USER

REASONING_EFFORTS = (None, "high", "max")


def is_thinking(thinking_mode: str) -> bool:
    """True for "thinking", False for "chat"; anything else is an error."""
    if thinking_mode not in ("chat", "thinking"):
        raise EncodingError(f"invalid thinking_mode {thinking_mode!r}; expected 'chat' or 'thinking'")
    return thinking_mode == "thinking"


class _Conversation:
    """The prepared message list and the settings every message's rendering depends on."""

    def __init__(self, messages: list[dict[str, Any]], thinking: bool, drop_thinking: bool):
        self.messages = messages
        self.thinking = thinking
        self.drop_thinking = drop_thinking
        self.last_user = last_user_index(messages)

    def render(self, index: int) -> str:
        msg = self.messages[index]
        body = getattr(self, f"_{msg['role']}")(index, msg)
        return body + self._transition(index, msg)

    # --- one method per role -------------------------------------------------------------------

    @staticmethod
    def _instructions(text: str, msg: dict[str, Any]) -> str:
        """`text` followed by the tools and response-format sections the message asks for."""
        if msg.get("tools"):
            text += "\n\n" + tools_section(msg["tools"])
        if msg.get("response_format"):
            text += "\n\n" + response_format_section(msg["response_format"])
        return text

    def _system(self, index: int, msg: dict[str, Any]) -> str:
        return self._instructions(msg["content"], msg)

    def _developer(self, index: int, msg: dict[str, Any]) -> str:
        if not msg["content"]:
            raise EncodingError(f"developer message {index} has empty content")
        return self._instructions(USER + msg["content"], msg)

    def _user(self, index: int, msg: dict[str, Any]) -> str:
        parts = [b["text"] if b["type"] == "text" else f"<tool_result>{b['content']}</tool_result>"
                 for b in msg["content_blocks"]]
        return USER + "\n\n".join(parts)

    def _latest_reminder(self, index: int, msg: dict[str, Any]) -> str:
        return LATEST_REMINDER + msg["content"]

    def _assistant(self, index: int, msg: dict[str, Any]) -> str:
        follows_task = index > 0 and self.messages[index - 1].get("task") is not None
        keeps_reasoning = not self.drop_thinking or index > self.last_user
        text = ""
        if self.thinking and not follows_task and keeps_reasoning:
            text = (msg.get("reasoning_content") or "") + THINK_CLOSE
        text += msg["content"]
        if msg.get("tool_calls"):
            calls = [(c["function"]["name"], c["function"].get("arguments")) for c in msg["tool_calls"]]
            text += render_tool_calls(calls)
        return text if msg.get("wo_eos") else text + EOS

    # --- what follows a message ------------------------------------------------------------------

    def _transition(self, index: int, msg: dict[str, Any]) -> str:
        """The assistant header (or task token) after a message that the model answers next."""
        following = self.messages[index + 1]["role"] if index + 1 < len(self.messages) else None
        if following not in (None, "assistant", "latest_reminder"):
            return ""
        task = msg.get("task")
        if task is not None:
            if task != "action":
                return TASK_TOKENS[task]
            return self._assistant_header(self.thinking) + TASK_TOKENS[task]
        if msg["role"] in USER_ROLES:
            return self._assistant_header(self.thinking and (not self.drop_thinking or index >= self.last_user))
        return ""

    @staticmethod
    def _assistant_header(opens_thinking: bool) -> str:
        return ASSISTANT + (THINK_OPEN if opens_thinking else THINK_CLOSE)


def _prepare(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise EncodingError(f"messages must be a list, got {type(messages).__name__}")
    return merge_tool_results([normalise(m) for m in messages])


def encode_messages(messages: list[dict[str, Any]], thinking_mode: str = "chat",
                    context: list[dict[str, Any]] | None = None, drop_thinking: bool = True,
                    add_default_bos_token: bool = True, reasoning_effort: str | None = None) -> str:
    """The prompt text for `messages` (rendered after the already-encoded `context`), byte-identical
    to DeepSeek's reference `encoding_dsv4.encode_messages`."""
    thinking = is_thinking(thinking_mode)
    if reasoning_effort not in REASONING_EFFORTS:
        raise EncodingError(f"invalid reasoning_effort {reasoning_effort!r}; expected None, 'high' or 'max'")
    history = _prepare(context or [])
    full = order_tool_results(history + _prepare(messages))
    drop = drop_thinking and not any(m.get("tools") for m in full)

    # The first rendered message is computed as the reference does it; when dropping developer
    # messages changes the context's size differently in `full` and alone, the counts disagree and
    # the reference renders only the tail; that is kept for byte-identity.
    count = len(full) - len(history)
    if thinking and drop:
        full = drop_stale_thinking(full)
        count = len(full) - len(drop_stale_thinking(history))

    conversation = _Conversation(full, thinking, drop)
    prompt = BOS if add_default_bos_token and not history else ""
    for index in range(len(full) - count, len(full)):
        if index == 0 and thinking and reasoning_effort == "max":
            prompt += REASONING_EFFORT_MAX
        prompt += conversation.render(index)
    return prompt
