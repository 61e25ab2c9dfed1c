"""DeepSeek-V4 chat encoding (messages -> prompt text) and output parsing (generation -> message).

- `encode_messages`: byte-identical to DeepSeek's reference `encoding_dsv4.encode_messages`, plus
  OpenAI conveniences (text-part lists, `reasoning` alias, dict tool-call arguments).
- `parse_message_from_completion_text`: the reference's strict parser.
- `parse_completion` / `StreamingParser`: the lenient parser the server uses, whole or streamed.
"""

from .completion import ParsedCompletion, ToolCall, collect, parse_completion
from .errors import EncodingError
from .parse import parse_message_from_completion_text
from .render import encode_messages
from .stream import (ContentDelta, Event, ReasoningDelta, StreamingParser, ToolCallArgsDelta, ToolCallEnd,
                     ToolCallStart)

__all__ = [
    "ContentDelta", "EncodingError", "Event", "ParsedCompletion", "ReasoningDelta", "StreamingParser",
    "ToolCall", "ToolCallArgsDelta", "ToolCallEnd", "ToolCallStart", "collect", "encode_messages",
    "parse_completion", "parse_message_from_completion_text",
]
