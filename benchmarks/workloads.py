"""The pluggable unit of a benchmark: a *session* that issues one or more requests.

The runner only knows `Session.run(send)`: a single prompt sends once, a conversation
sends each turn after the previous answer came back, and a frontend program (later) can
issue whatever calls it makes through the same `send`. Arrival rate and concurrency
limits apply per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from .metrics import RequestRecord

Content = str | list[int]  # text, or token ids for backends that take them


@dataclass
class BenchRequest:
    messages: list[dict]  # {"role", "content": Content}
    max_tokens: int

    def prompt(self) -> Content:
        """The messages as one raw prompt: texts joined by newlines, or token ids concatenated."""
        contents = [m["content"] for m in self.messages]
        if all(isinstance(c, str) for c in contents):
            return "\n".join(contents)
        if all(isinstance(c, list) for c in contents):
            return [t for c in contents for t in c]
        raise ValueError("a request mixes text and token-id messages")


Send = Callable[[BenchRequest], Awaitable[RequestRecord]]


class Session(Protocol):
    num_requests: int

    async def run(self, send: Send) -> None: ...


@dataclass
class SingleTurn:
    request: BenchRequest
    num_requests: int = 1

    async def run(self, send: Send) -> None:
        await send(self.request)


@dataclass
class Conversation:
    """User turns sent one after another, each with the whole history including the
    server's earlier answers; stops at the first failed turn."""

    user_turns: list[str]
    max_tokens: int
    system: str | None = None

    @property
    def num_requests(self) -> int:
        return len(self.user_turns)

    async def run(self, send: Send) -> None:
        history = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.user_turns:
            history.append({"role": "user", "content": turn})
            record = await send(BenchRequest(list(history), self.max_tokens))
            if not record.ok:
                return
            history.append({"role": "assistant", "content": record.text})
