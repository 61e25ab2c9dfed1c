"""`parse_completion`: a finished generation parsed at once by the streaming parser."""

from __future__ import annotations

from dataclasses import dataclass, field

from .stream import ContentDelta, Event, ReasoningDelta, StreamingParser, ToolCallArgsDelta, ToolCallStart


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text


@dataclass
class ParsedCompletion:
    content: str
    reasoning_content: str | None  # None outside thinking mode
    tool_calls: list[ToolCall] = field(default_factory=list)


def collect(events: list[Event], thinking: bool) -> ParsedCompletion:
    """The completion that a list of streaming events spells out."""
    reasoning, content, calls = [], [], []
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls.append(ToolCall(event.name, ""))
        elif isinstance(event, ToolCallArgsDelta):
            calls[event.index].arguments += event.text
    return ParsedCompletion("".join(content), "".join(reasoning) if thinking else None, calls)


def parse_completion(text: str, thinking: bool, tools: bool) -> ParsedCompletion:
    """Lenient parse of a whole generation (detokenized, EOS excluded); never raises.

    Tool calls are parsed only when `tools` is true; see `stream` for the fallback rules."""
    parser = StreamingParser(thinking, tools)
    return collect(parser.feed(text) + parser.finish(), thinking)
