"""`Conversation`: the text a program builds, and how it renders.

Outside role blocks a program writes free text (completion style). Role blocks turn it into a
V4 chat: completed messages plus the open block, and the text is exactly `encode_messages` of
them, so an assistant `gen` continues after `<｜Assistant｜></think>` (or `<think>` for a
thinking gen). The V4 format drops old reasoning when a new user turn starts, so the text is
re-rendered from the messages rather than only appended to.

Every method takes the lock: the worker thread writes while a streaming reader renders.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from ..runtime.encoding import encode_messages
from ..runtime.encoding.tokens import ASSISTANT, THINK_CLOSE

# What the V4 encoding appends after a last user message in non-think mode; an open user block
# is rendered without it.
_NEXT_TURN_HEADER = ASSISTANT + THINK_CLOSE


def with_tools(messages: list[dict], tools: list[dict]) -> list[dict]:
    """`tools` attached to the first system message (a new empty one if none), as V4 renders them."""
    if not tools:
        return messages
    for i, msg in enumerate(messages):
        if msg["role"] == "system":
            return messages[:i] + [{**msg, "tools": tools}] + messages[i + 1:]
    return [{"role": "system", "content": "", "tools": tools}] + messages


class Conversation:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.raw = ""  # free text, when the program uses no role blocks
        self.messages: list[dict[str, Any]] = []  # completed messages (OpenAI format)
        self.role: str | None = None  # the open role block
        self.content = ""  # the open block's text so far
        self.reasoning: str | None = None  # the open assistant turn's reasoning (thinking gens)
        self.reasoning_open = False  # reasoning is being generated: no </think> yet
        self.tool_calls: list[dict] = []  # the open assistant turn's tool calls (OpenAI form)
        self.thinking = False  # the current assistant turn thinks; the whole chat renders in that mode
        self.effort: str | None = None
        self.tools: list[dict] = []  # OpenAI tool schemas, rendered in the system message

    def copy(self) -> "Conversation":
        with self._lock:
            other = copy.copy(self)
            other._lock = threading.RLock()
            other.messages, other.tools = list(self.messages), list(self.tools)
            return other

    @property
    def is_chat(self) -> bool:
        return bool(self.messages) or self.role is not None

    @property
    def at_turn_start(self) -> bool:
        """An assistant block is open and nothing is written in it yet."""
        return self.role == "assistant" and not self.content and self.reasoning is None

    # --- writing ---------------------------------------------------------------------------------

    def append(self, text: str) -> None:
        with self._lock:
            if self.role is not None:
                self.content += text
                self.reasoning_open = False
            elif self.is_chat:
                raise ValueError("free text after role blocks: put it inside sgl.user(...), sgl.assistant(...) "
                                 "or sgl.system(...)")
            else:
                self.raw += text

    def begin(self, role: str) -> None:
        with self._lock:
            if self.role is not None:
                raise ValueError(f"cannot open a {role} block inside the open {self.role} block")
            if self.raw:
                raise ValueError("role blocks after free text: a program is either free text or role blocks")
            if role != "assistant":  # a new turn: non-think until a thinking gen says otherwise
                self.thinking, self.effort = False, None
            self.role, self.content, self.reasoning, self.reasoning_open = role, "", None, False
            self.tool_calls = []

    def end(self, role: str) -> None:
        with self._lock:
            if self.role != role:
                raise ValueError(f"{role}_end() without an open {role} block (open: {self.role})")
            self.messages.append(self._message())
            self.role = None

    def start_thinking(self, effort: str | None) -> None:
        """Switch the open assistant turn to thinking: its text now ends with `<think>`."""
        with self._lock:
            previous = self.messages[-1]["role"] if self.messages else None
            if not self.at_turn_start or previous not in ("user", "tool"):
                raise ValueError("a thinking gen must start an assistant block that follows a user turn")
            self.thinking, self.effort = True, effort
            self.reasoning, self.reasoning_open = "", True

    def add_reasoning(self, delta: str) -> None:
        with self._lock:
            self.reasoning += delta

    def set_turn(self, reasoning: str | None, content: str, tool_calls: list[dict]) -> None:
        """The finished turn's final reasoning, answer and tool calls (replacing what was streamed)."""
        with self._lock:
            self.reasoning, self.reasoning_open, self.content = reasoning, False, content
            self.tool_calls = tool_calls

    def use_tools(self, schemas: list[dict]) -> None:
        with self._lock:
            known = {t["function"]["name"] for t in self.tools}
            self.tools += [s for s in schemas if s["function"]["name"] not in known]

    def add_tool_results(self, results: list[str]) -> None:
        """Close the open assistant turn (with its tool calls), add one `tool` message per call,
        and open the assistant turn that continues after them."""
        with self._lock:
            self.messages.append(self._message())
            self.messages += [{"role": "tool", "tool_call_id": call["id"], "content": result}
                              for call, result in zip(self.tool_calls, results)]
            self.content, self.reasoning, self.tool_calls = "", None, []

    def mark(self) -> tuple[int, str | None, int]:
        """Where the text is now, for `since`."""
        with self._lock:
            return len(self.messages), self.role, len(self.content if self.role else self.raw)

    def since(self, mark: tuple[int, str | None, int]) -> str:
        """The text written after `mark`, which must lie in the same block."""
        with self._lock:
            count, role, length = mark
            if (len(self.messages), self.role) != (count, role):
                raise ValueError("a fork's text can be appended only while it stays in the block it was forked in")
            return (self.content if role else self.raw)[length:]

    # --- reading ---------------------------------------------------------------------------------

    def _message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg

    def chat_messages(self) -> list[dict[str, Any]]:
        """The completed messages, as an OpenAI chat request sends them."""
        with self._lock:
            return [dict(m) for m in self.messages]

    def text(self) -> str:
        with self._lock:
            if not self.is_chat:
                return self.raw
            messages = list(self.messages)
            if self.role is not None and not self.reasoning_open:
                messages.append({**self._message(), "wo_eos": True})
            text = encode_messages(with_tools(messages, self.tools), "thinking" if self.thinking else "chat",
                                   reasoning_effort=self.effort if self.thinking else None)
            if self.reasoning_open:  # the header `<｜Assistant｜><think>` came with the user turn
                return text + self.reasoning
            return text.removesuffix(_NEXT_TURN_HEADER) if self.role == "user" else text
