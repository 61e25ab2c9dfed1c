"""The lenient, incremental parser of a V4 generation: reasoning, content and DSML tool calls.

This state machine is the one definition of the lenient grammar; `parse_completion` runs it over
a whole text. Text is held back only while it could still become a marker, so events do not
depend on how the text is split into deltas.

With tool parsing on, DSML markup never becomes reasoning or content, and a tool call counts only
once its invoke is closed (`ToolCallEnd`):
- DSML that does not parse (a malformed tag, a duplicate parameter, a tag outside a tool-calls
  block) is dropped up to the end of its tool-calls block, and the call it was part of never ends;
- at the end of the generation, a tool-calls block still open is dropped with its unfinished call,
  and so is a partial block marker (`\\n\\n<｜DSML…`) held back from the text;
  `ended_in_tool_calls` then tells that a call may have been cut off.
Text after the end of a tool-calls block is content again. Without tool parsing, everything after
the reasoning is content, verbatim.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Union

from .dsml import argument_key, close_arguments, string_body
from .tokens import (DSML, INVOKE_CLOSE, INVOKE_OPEN, PARAM_CLOSE, PARAM_OPEN, THINK_CLOSE, TOOL_CALLS_CLOSE,
                     TOOL_CALLS_MARKER)

# Any DSML tag outside a well-formed block: the start of markup that cannot be parsed.
_STRAY_TAGS = (f"<{DSML}", f"</{DSML}")


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


@dataclass
class ToolCallEnd:
    """The call's invoke is closed: its arguments are complete."""

    index: int


Event = Union[ReasoningDelta, ContentDelta, ToolCallStart, ToolCallArgsDelta, ToolCallEnd]


class _S(enum.Enum):
    REASONING = "reasoning"              # text up to </think> (or a tool-calls block)
    CONTENT = "content"                  # text up to a tool-calls block
    TAIL = "tail"                        # no tool parsing: everything is content from here on
    DISCARD = "discard"                  # unparseable DSML, dropped up to the block end
    BETWEEN_INVOKES = "between_invokes"  # next: an invoke or the block end
    NAME = "name"                        # tool name up to its quote
    AFTER_NAME = "after_name"
    BETWEEN_PARAMS = "between_params"    # next: a parameter or the invoke end
    KEY = "key"                          # parameter name up to its quote
    AFTER_KEY = "after_key"
    STRING_VALUE = "string_value"        # value up to </｜DSML｜parameter>, JSON-quoted
    RAW_VALUE = "raw_value"              # value up to </｜DSML｜parameter>, verbatim


_TEXT_STATES = (_S.REASONING, _S.CONTENT, _S.TAIL)


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


def _is_marker_fragment(tail: str) -> bool:
    """Held-back text that is the start of DSML markup, not just newlines or a lone `<`."""
    return DSML[0] in tail or (len(tail) > 2 and TOOL_CALLS_MARKER.startswith(tail))


class StreamingParser:
    """Feed the detokenized generation (EOS excluded) delta by delta; call `finish` at the end.

    With `whole_calls`, a tool call's events are held until its invoke closes and then come
    together (start, all arguments, end), so a call cut off by the end of the generation is never
    announced; call indexes then count complete calls only."""

    def __init__(self, thinking: bool, tools: bool, whole_calls: bool = False):
        self._tools = tools
        self._whole_calls = whole_calls
        self._state = _S.REASONING if thinking else _S.CONTENT if tools else _S.TAIL
        self._buf = ""        # received text not consumed yet
        self._events: list[Event] = []
        self._held: list[Event] = []  # the open call's events (whole_calls only)
        self._call = -1       # index of the latest tool call
        self._complete = 0    # calls whose invoke closed
        self._in_call = False
        self._keys: list[str] = []
        self._field = ""      # the name or key just read
        self._quote_open = False
        self.ended_in_tool_calls = False  # set by `finish`: the text ended inside a tool-calls block

    def feed(self, delta: str) -> list[Event]:
        """Events for the text that `delta` makes decidable."""
        self._buf += delta
        while self._step():
            pass
        return self._take()

    def finish(self) -> list[Event]:
        """Events for the held-back text at the end of the generation."""
        if self._state in _TEXT_STATES and not (self._tools and _is_marker_fragment(self._buf)):
            self._emit_text(self._buf)
        else:
            self.ended_in_tool_calls = True
            self._drop_call()
        self._buf = ""
        return self._take()

    # --- events ----------------------------------------------------------------------------------

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _emit(self, event: Event) -> None:
        """Queue `event`; text joins the previous event when that is of the same kind and call."""
        queue = self._held if self._whole_calls and self._in_call else self._events
        if isinstance(event, (ToolCallStart, ToolCallEnd)):
            queue.append(event)
            return
        if not event.text:
            return
        last = queue[-1] if queue else None
        if type(last) is type(event) and getattr(last, "index", None) == getattr(event, "index", None):
            last.text += event.text
        else:
            queue.append(event)

    def _emit_text(self, text: str) -> None:
        self._emit(ReasoningDelta(text) if self._state is _S.REASONING else ContentDelta(text))

    def _emit_args(self, text: str) -> None:
        self._emit(ToolCallArgsDelta(self._call, text))

    # --- the machine -----------------------------------------------------------------------------

    def _step(self) -> bool:
        """Consume what can be decided from the buffer; False when more text is needed."""
        state = self._state
        if state is _S.TAIL:
            self._emit_text(self._buf)
            self._buf = ""
            return False
        if state in (_S.REASONING, _S.CONTENT):
            return self._scan_text()
        if state is _S.DISCARD:
            return self._discard()
        if state in (_S.STRING_VALUE, _S.RAW_VALUE):
            return self._scan_value()
        if state in (_S.NAME, _S.KEY):
            return self._read_field()
        return self._match_literal()

    def _scan_text(self) -> bool:
        reasoning = self._state is _S.REASONING
        markers = ((THINK_CLOSE,) if reasoning else ()) + ((TOOL_CALLS_MARKER, *_STRAY_TAGS) if self._tools else ())
        at, marker = _scan(self._buf, markers)
        self._emit_text(self._buf[:at])
        self._buf = self._buf[at:]
        if marker is None:
            return False
        if marker == THINK_CLOSE:
            self._buf = self._buf[len(marker):]
            self._state = _S.CONTENT if self._tools else _S.TAIL
        elif marker == TOOL_CALLS_MARKER:
            self._buf = self._buf[len(marker):]
            self._state = _S.BETWEEN_INVOKES
        else:  # a stray tag stays in the buffer: it may itself be the block end
            self._state = _S.DISCARD
        return True

    def _discard(self) -> bool:
        at, marker = _scan(self._buf, (TOOL_CALLS_CLOSE,))
        self._buf = self._buf[at:]
        if marker is None:
            return False
        self._buf = self._buf[len(marker):]
        self._state = _S.CONTENT
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
        self._state = _S.AFTER_NAME if self._state is _S.NAME else _S.AFTER_KEY
        return True

    def _match_literal(self) -> bool:
        transitions = _TRANSITIONS[self._state]
        for literal, target, action in transitions:
            if self._buf.startswith(literal):
                self._buf = self._buf[len(literal):]
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
        self._emit_args(close_arguments(bool(self._keys)))
        self._emit(ToolCallEnd(self._call))
        self._in_call = False
        held, self._held = self._held, []
        for event in held:  # whole_calls: renumber by complete calls
            event.index = self._complete
            self._emit(event)
        self._complete += 1

    def _drop_call(self) -> None:
        """The open call (if any) will never end; in whole_calls mode nothing of it was emitted."""
        self._in_call, self._quote_open, self._held = False, False, []

    def _fall_back(self) -> None:
        """Malformed DSML: drop it and the open call, up to the end of the tool-calls block."""
        self._drop_call()
        self._state = _S.DISCARD


_Action = Callable[[StreamingParser], None]
_TRANSITIONS: dict[_S, tuple[tuple[str, _S, _Action | None], ...]] = {
    _S.BETWEEN_INVOKES: (("\n" + INVOKE_OPEN + ' name="', _S.NAME, None),
                         ("\n" + TOOL_CALLS_CLOSE, _S.CONTENT, None)),
    _S.AFTER_NAME: (('">', _S.BETWEEN_PARAMS, StreamingParser._open_call),),
    _S.BETWEEN_PARAMS: (("\n" + PARAM_OPEN + ' name="', _S.KEY, None),
                        ("\n" + INVOKE_CLOSE, _S.BETWEEN_INVOKES, StreamingParser._close_call),
                        # an invoke without parameters renders with a blank line
                        ("\n\n" + INVOKE_CLOSE, _S.BETWEEN_INVOKES, StreamingParser._close_call)),
    _S.AFTER_KEY: (('" string="true">', _S.STRING_VALUE, StreamingParser._open_param),
                   ('" string="false">', _S.RAW_VALUE, StreamingParser._open_param)),
}
