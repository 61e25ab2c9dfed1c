"""What every backend offers the interpreter, and the request/result types between them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..choices import ChoicesDecision, ChoicesSamplingMethod
from ..sampling import SamplingParams

OnText = Callable[[str], None]


@dataclass
class Completion:
    text: str
    meta: dict[str, Any]  # SGLang's meta_info: prompt_tokens, completion_tokens, cached_tokens, finish_reason, ...


@dataclass
class TurnRequest:
    """One assistant turn, in both forms: the V4 prompt text and the chat messages it encodes."""
    prompt: str  # ends with `<｜Assistant｜></think>`, or `<think>` for a thinking turn
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # OpenAI tool schemas the prompt offers
    tool_choice: str  # "auto", "required" or a tool name
    thinking: bool
    effort: str | None  # None, "high" or "max"
    max_thinking_tokens: int | None
    params: SamplingParams


@dataclass
class TurnResult:
    content: str
    reasoning: str | None
    tool_calls: list[dict[str, Any]]  # OpenAI form: {"id", "type": "function", "function": {"name", "arguments"}}
    meta: dict[str, Any]


class TurnSink(Protocol):
    """Receives a streamed turn's text as it is generated."""

    def reasoning(self, delta: str) -> None: ...

    def content(self, delta: str) -> None: ...


def merge_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """The meta_info of a gen that took several requests: the last one's, with the completion
    tokens summed and every request's meta_info under "requests"."""
    if len(metas) == 1:
        return metas[0]
    return {**metas[-1], "completion_tokens": sum(m.get("completion_tokens", 0) for m in metas), "requests": metas}


class Backend(ABC):
    @abstractmethod
    def complete(self, prompt: str, params: SamplingParams, on_text: OnText | None = None) -> Completion:
        """Continue `prompt`; with `on_text`, stream the new text into it as it comes."""

    @abstractmethod
    def assistant_turn(self, request: TurnRequest, sink: TurnSink | None = None) -> TurnResult:
        """Generate one assistant turn: reasoning (thinking turns), then the answer or tool calls."""

    @abstractmethod
    def select(self, prompt: str, choices: list[str], method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Choose how to continue `prompt` among `choices`."""

    def cache_prefix(self, text: str) -> None:
        """Make `text` a cached prefix before several requests that share it start at once."""

    def flush_cache(self) -> bool:
        return False

    def get_server_info(self) -> dict[str, Any] | None:
        return None

    def shutdown(self) -> None:
        """Release what the backend holds (connections, an engine it started)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
