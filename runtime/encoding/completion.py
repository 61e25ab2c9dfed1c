"""`parse_completion`: a finished generation parsed at once by the streaming parser."""

from __future__ import annotations

from dataclasses import dataclass, field

from .stream import (ContentDelta, Event, ReasoningDelta, StreamingParser, ToolCallArgsDelta, ToolCallEnd,
                     ToolCallStart)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text


@dataclass
class ParsedCompletion:
    content: str
    reasoning_content: str | None  # None outside thinking mode
    tool_calls: list[ToolCall] = field(default_factory=list)  # complete calls only
    ended_in_tool_calls: bool = False  # the text stopped inside a tool-calls block (a call may be cut off)


def collect(events: list[Event], thinking: bool, ended_in_tool_calls: bool = False) -> ParsedCompletion:
    """The completion that a list of streaming events spells out; calls that never end are left out."""
    reasoning, content, calls, complete = [], [], {}, []
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls[event.index] = ToolCall(event.name, "")
        elif isinstance(event, ToolCallArgsDelta):
            calls[event.index].arguments += event.text
        elif isinstance(event, ToolCallEnd):
            complete.append(calls[event.index])
    return ParsedCompletion("".join(content), "".join(reasoning) if thinking else None, complete,
                            ended_in_tool_calls)


def parse_completion(text: str, thinking: bool, tools: bool) -> ParsedCompletion:
    """Lenient parse of a whole generation (detokenized, EOS excluded); never raises.

    Tool calls are parsed only when `tools` is true; see `stream` for the rules on malformed and
    truncated DSML."""
    parser = StreamingParser(thinking, tools)
    events = parser.feed(text) + parser.finish()
    return collect(events, thinking, parser.ended_in_tool_calls)
