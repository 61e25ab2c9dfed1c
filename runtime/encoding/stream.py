"""The lenient, incremental parser of a V4 generation: reasoning, content and DSML tool calls.

This state machine is the one definition of the lenient grammar; `parse_completion` runs it over
a whole text. Text is held back only while it could still become a marker, so events do not
depend on how the text is split into deltas.

Malformed or truncated DSML never raises: the DSML text not yet turned into events, and
everything after it, becomes content. A tool call already announced (its name was complete) stays,
and its arguments are closed: `"` if a string value was open, then `}`; a cut-off non-string value
stays as written, so only then are the arguments not valid JSON. Text after the end of the
tool-calls block is content.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Union

from .dsml import argument_key, close_arguments, string_body
from .tokens import INVOKE_CLOSE, INVOKE_OPEN, PARAM_CLOSE, PARAM_OPEN, THINK_CLOSE, TOOL_CALLS_CLOSE, TOOL_CALLS_MARKER


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ContentDelta:
    text: str


@dataclass
class ToolCallStart:
    index: int
    name: str


@dataclass
class ToolCallArgsDelta:
    index: int
    text: str


Event = Union[ReasoningDelta, ContentDelta, ToolCallStart, ToolCallArgsDelta]


class _S(enum.Enum):
    REASONING = "reasoning"              # text up to </think> (or a tool-calls block)
    CONTENT = "content"                  # text up to a tool-calls block
    TAIL = "tail"                        # everything is content from here on
    BETWEEN_INVOKES = "between_invokes"  # next: an invoke or the block end
    NAME = "name"                        # tool name up to its quote
    AFTER_NAME = "after_name"
    BETWEEN_PARAMS = "between_params"    # next: a parameter or the invoke end
    KEY = "key"                          # parameter name up to its quote
    AFTER_KEY = "after_key"
    STRING_VALUE = "string_value"        # value up to </｜DSML｜parameter>, JSON-quoted
    RAW_VALUE = "raw_value"              # value up to </｜DSML｜parameter>, verbatim


def _hold_start(buf: str, markers: tuple[str, ...]) -> int:
    """Start of the longest suffix of `buf` that is a proper prefix of a marker (len(buf) if none)."""
    window = max(len(m) for m in markers) - 1
    for start in range(max(0, len(buf) - window), len(buf)):
        tail = buf[start:]
        if any(m.startswith(tail) for m in markers):
            return start
    return len(buf)


def _scan(buf: str, markers: tuple[str, ...]) -> tuple[int, str | None]:
    """(where the earliest marker starts, the marker), or (how much text is safe to emit, None)."""
    hits = [(at, m) for m in markers if (at := buf.find(m)) >= 0]
    hold = _hold_start(buf, markers)
    if hits:
        at, marker = min(hits)
        if at < hold:
            return at, marker
    return hold, None


class StreamingParser:
    """Feed the detokenized generation (EOS excluded) delta by delta; call `finish` at the end."""

    def __init__(self, thinking: bool, tools: bool):
        self._tools = tools
        self._state = _S.REASONING if thinking else _S.CONTENT if tools else _S.TAIL
        self._buf = ""        # received text not consumed yet
        self._pending = ""    # DSML text consumed but not yet turned into an event
        self._events: list[Event] = []
        self._call = -1       # index of the latest tool call
        self._in_call = False
        self._keys: list[str] = []
        self._field = ""      # the name or key just read
        self._quote_open = False

    def feed(self, delta: str) -> list[Event]:
        """Events for the text that `delta` makes decidable."""
        self._buf += delta
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[Event]:
        """Events for the held-back text at the end of the generation."""
        if self._state is _S.REASONING:
            self._emit(ReasoningDelta(self._buf))
        elif self._state in (_S.CONTENT, _S.TAIL):
            self._emit(ContentDelta(self._buf))
        else:
            self._fall_back()
        self._buf = ""
        return self._take()

    # --- events ----------------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _emit(self, event: Event) -> None:
        """Queue `event`; text joins the previous event when that is of the same kind and call."""
        if isinstance(event, ToolCallStart):
            self._events.append(event)
            return
        if not event.text:
            return
        last = self._events[-1] if self._events else None
        if type(last) is type(event) and getattr(last, "index", None) == getattr(event, "index", None):
            last.text += event.text
        else:
            self._events.append(event)

    def _emit_args(self, text: str) -> None:
        self._pending = ""
        self._emit(ToolCallArgsDelta(self._call, text))

    # --- the machine -----------------------------------------------------------------------------

    def _step(self) -> bool:
        """Consume what can be decided from the buffer; False when more text is needed."""
        state = self._state
        if state is _S.TAIL:
            self._emit(ContentDelta(self._buf))
            self._buf = ""
            return False
        if state in (_S.REASONING, _S.CONTENT):
            return self._scan_text()
        if state in (_S.STRING_VALUE, _S.RAW_VALUE):
            return self._scan_value()
        if state in (_S.NAME, _S.KEY):
            return self._read_field()
        return self._match_literal()

    def _scan_text(self) -> bool:
        reasoning = self._state is _S.REASONING
        markers = ((THINK_CLOSE,) if reasoning else ()) + ((TOOL_CALLS_MARKER,) if self._tools else ())
        at, marker = _scan(self._buf, markers)
        text, self._buf = self._buf[:at], self._buf[at:]
        self._emit(ReasoningDelta(text) if reasoning else ContentDelta(text))
        if marker is None:
            return False
        self._buf = self._buf[len(marker):]
        if marker == THINK_CLOSE:
            self._state = _S.CONTENT if self._tools else _S.TAIL
        else:
            self._state, self._pending = _S.BETWEEN_INVOKES, marker
        return True

    def _scan_value(self) -> bool:
        at, marker = _scan(self._buf, (PARAM_CLOSE,))
        value, self._buf = self._buf[:at], self._buf[at:]
        self._emit_args(string_body(value) if self._quote_open else value)
        if marker is None:
            return False
        self._buf = self._buf[len(marker):]
        self._close_quote()
        self._state = _S.BETWEEN_PARAMS
        return True

    def _read_field(self) -> bool:
        """A name or key: the text up to the next quote, on one line."""
        end = self._buf.find('"')
        newline = self._buf.find("\n", 0, None if end < 0 else end)
        if newline >= 0:
            self._fall_back()
            return True
        if end < 0:
            return False
        self._field, self._buf = self._buf[:end], self._buf[end:]
        self._pending += self._field
        self._state = _S.AFTER_NAME if self._state is _S.NAME else _S.AFTER_KEY
        return True

    def _match_literal(self) -> bool:
        transitions = _TRANSITIONS[self._state]
        for literal, target, action in transitions:
            if self._buf.startswith(literal):
                self._buf = self._buf[len(literal):]
                self._pending += literal
                self._state = target
                if action is not None:
                    action(self)
                return True
        if any(literal.startswith(self._buf) for literal, _, _ in transitions):
            return False
        self._fall_back()
        return True

    # --- transition actions ----------------------------------------------------------------------

    def _open_call(self) -> None:
        self._call += 1
        self._in_call, self._keys = True, []
        self._pending = ""
        self._emit(ToolCallStart(self._call, self._field))

    def _open_param(self) -> None:
        if self._field in self._keys:
            self._fall_back()
            return
        self._quote_open = self._state is _S.STRING_VALUE
        self._emit_args(argument_key(self._field, not self._keys) + ('"' if self._quote_open else ""))
        self._keys.append(self._field)

    def _close_quote(self) -> None:
        if self._quote_open:
            self._quote_open = False
            self._emit_args('"')

    def _close_call(self) -> None:
        self._in_call = False
        self._emit_args(close_arguments(bool(self._keys)))

    def _close_block(self) -> None:
        self._pending = ""

    def _fall_back(self) -> None:
        """Malformed or truncated DSML: close the open call, the unparsed text becomes content."""
        unparsed = self._pending + self._buf
        if self._in_call:
            self._close_quote()
            self._close_call()
        self._pending = self._buf = ""
        self._state = _S.TAIL
        self._emit(ContentDelta(unparsed))


_Action = Callable[[StreamingParser], None]
_TRANSITIONS: dict[_S, tuple[tuple[str, _S, _Action | None], ...]] = {
    _S.BETWEEN_INVOKES: (("\n" + INVOKE_OPEN + ' name="', _S.NAME, None),
                         ("\n" + TOOL_CALLS_CLOSE, _S.TAIL, StreamingParser._close_block)),
    _S.AFTER_NAME: (('">', _S.BETWEEN_PARAMS, StreamingParser._open_call),),
    _S.BETWEEN_PARAMS: (("\n" + PARAM_OPEN + ' name="', _S.KEY, None),
                        ("\n" + INVOKE_CLOSE, _S.BETWEEN_INVOKES, StreamingParser._close_call),
                        # an invoke without parameters renders with a blank line
                        ("\n\n" + INVOKE_CLOSE, _S.BETWEEN_INVOKES, StreamingParser._close_call)),
    _S.AFTER_KEY: (('" string="true">', _S.STRING_VALUE, StreamingParser._open_param),
                   ('" string="false">', _S.RAW_VALUE, StreamingParser._open_param)),
}
