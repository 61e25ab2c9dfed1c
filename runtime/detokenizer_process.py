"""The detokenizer process: incremental, UTF-8-safe detokenization and stop strings.

Work per decode step is bounded by the new tokens, not by the output so far:

- text is decoded from a short window of tokens with read / prefix offsets (the technique of
  vLLM, SGLang and TGI): `decode(ids[prefix:])` minus the characters already accounted for;
  the window moves forward whenever the text ends on a whole character;
- a trailing U+FFFD (an incomplete UTF-8 sequence, which a later token may complete) is held
  back; everything before it is settled and sent;
- stop strings and `stop_regex` are searched in a bounded tail of the text (see `StopMatcher`).

The scheduler sends one `TokenBatch` per step; the reply is one `TextBatch` per step.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import zmq
from transformers import PreTrainedTokenizerFast

from .protocol import (ControlReply, ErrorOut, RequestMeta, TextBatch, TextOut, TokenBatch, TokenOut,
                       detokenizer_decoder, encode)
from .tokenizer import load_tokenizer

REPLACEMENT = "\ufffd"
# A window that never ends on a whole character (garbage: every token leaves an incomplete
# UTF-8 sequence) is moved on after this many tokens, so that work stays bounded; only then
# may the text differ from a full decode.
MAX_WINDOW_TOKENS = 64
# Matches of a stop_regex that can be longer than this (`.*`, `+`, `{n,}`) are only found
# within the last STOP_REGEX_MAX_LEN characters; matches of bounded width are found exactly.
STOP_REGEX_MAX_LEN = 1024
# Characters kept before a search's start, for lookbehinds and so that `^` only matches at
# the real start of the text.
SEARCH_CONTEXT = 32

Decode = Callable[..., str]


def regex_width(pattern: str, cap: int) -> int:
    """The longest match `pattern` can have, or `cap` when that is unbounded or larger."""
    from re import _parser  # the stdlib's own regex parser; no public API gives a pattern's width

    return min(_parser.parse(pattern).getwidth()[1], cap)


class IncrementalDecoder:
    """The text of a growing token list, decoding only a window of recent tokens per step.

    `prefix` is a token index where the text ended on a whole character; `read` is the end
    of the tokens whose text is settled; `prefix_chars` is the length of the text of
    `ids[prefix:read]`, `shown` how much of the window's text has been returned."""

    def __init__(self, decode: Decode, skip_special_tokens: bool = True) -> None:
        self.decode, self.skip_special_tokens = decode, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = self.prefix_chars = self.shown = 0

    def push(self, new_ids: list[int], final: bool = False) -> str:
        """Append `new_ids`; the text that became settled (all of it when `final`)."""
        self.ids += new_ids
        text = self.decode(self.ids[self.prefix:], skip_special_tokens=self.skip_special_tokens)
        whole = final or not text.endswith(REPLACEMENT)
        visible = len(text) if whole else len(text) - 1
        fresh = text[self.shown:visible]
        self.shown = max(self.shown, visible)
        if whole or len(self.ids) - self.prefix > MAX_WINDOW_TOKENS:
            window_chars = len(text) - self.prefix_chars  # the text of ids[read:]
            self.shown -= self.prefix_chars
            self.prefix, self.read, self.prefix_chars = self.read, len(self.ids), window_chars
        return fresh

    @property
    def window(self) -> int:
        """Tokens the next step will decode, besides the new ones."""
        return len(self.ids) - self.prefix


class StopMatcher:
    """Cuts the text at the first stop string or `stop_regex` match and holds back a tail
    that could still become a stop string.

    Only a tail of the text is kept: a stop string first appears overlapping the new text,
    so the search starts `len(longest stop) - 1` characters before it; a regex match starts
    at most its maximum width (`regex_width`) before the new text ends."""

    def __init__(self, stop: list[str], stop_regex: list[str], regex_max_len: int = STOP_REGEX_MAX_LEN) -> None:
        self.stop = list(stop)
        self.longest = max(map(len, self.stop), default=0)
        self.regexes = [(re.compile(p), regex_width(p, regex_max_len)) for p in stop_regex]
        self.history = max([self.longest] + [w for _, w in self.regexes]) + SEARCH_CONTEXT
        self.tail = ""  # the last characters of the text
        self.base = 0  # position of tail[0] in the whole text
        self.sent = 0  # characters of the text returned so far
        self.stopped = False

    def feed(self, fresh: str, final: bool = False) -> str:
        """Append `fresh`; the text that can be sent now."""
        if self.stopped:
            return ""
        self.tail += fresh
        end = self.base + len(self.tail)
        start = len(self.tail) - len(fresh)  # where `fresh` begins in the tail
        cut = self._first_match(start)
        if cut is not None:
            self.stopped = True
            upto = self.base + cut
        else:
            upto = end if final else end - self._held()
        out = self.tail[self.sent - self.base:upto - self.base] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        keep = min(self.sent, end - self.history) - self.base  # unsent text stays
        if keep > 0:
            self.tail, self.base = self.tail[keep:], self.base + keep
        return out

    def _first_match(self, start: int) -> int | None:
        """The earliest position in the tail where a stop string or regex match begins."""
        found = [i for s in self.stop if (i := self.tail.find(s, max(0, start - len(s) + 1))) != -1]
        for pattern, width in self.regexes:
            match = pattern.search(self.tail, max(0, start - width))
            if match:
                found.append(match.start())
        return min(found, default=None)

    def _held(self) -> int:
        """Length of the longest tail that is a proper prefix of a stop string (only the
        places where a stop string's first character occurs are tried)."""
        held, n = 0, len(self.tail)
        for s in self.stop:
            i = self.tail.find(s[0], max(0, n - len(s) + 1))
            while i != -1 and n - i > held:
                if s.startswith(self.tail[i:]):
                    held = n - i
                    break
                i = self.tail.find(s[0], i + 1)
        return held


@dataclass
class DecodeState:
    decoder: IncrementalDecoder
    matcher: StopMatcher = field(default_factory=lambda: StopMatcher([], []))


class Detokenizer:
    def __init__(self, decode: Decode, regex_max_len: int = STOP_REGEX_MAX_LEN) -> None:
        self.decode = decode
        self.regex_max_len = regex_max_len
        self.states: dict[str, DecodeState] = {}

    def register(self, meta: RequestMeta) -> None:
        self.states[meta.rid] = DecodeState(IncrementalDecoder(self.decode, meta.skip_special_tokens),
                                            StopMatcher(meta.stop, meta.stop_regex, self.regex_max_len))

    def step(self, out: TokenOut) -> TextOut:
        st = self.states.get(out.rid)
        if st is None:  # no RequestMeta came: plain decoding
            st = self.states[out.rid] = DecodeState(IncrementalDecoder(self.decode))
        new_ids = [out.token] if out.token is not None else []
        finished = out.finish is not None
        delta = st.matcher.feed(st.decoder.push(new_ids, finished), finished)
        if finished:
            del self.states[out.rid]
        return TextOut(out.rid, delta, new_ids, [out.logprob] if new_ids else [],
                       [out.top_logprobs] if new_ids else [], out.finish, out.prompt_tokens, out.cached_tokens,
                       out.completion_tokens, out.input_logprobs, out.input_top_logprobs, out.spec)

    def step_batch(self, batch: TokenBatch) -> TextBatch:
        return TextBatch([self.step(item) for item in batch.items])


def fast_decode(tok: PreTrainedTokenizerFast) -> Decode:
    """`tok.decode` without the transformers wrapper's per-call overhead, where that is the same."""
    if tok.clean_up_tokenization_spaces:
        return tok.decode
    backend = tok.backend_tokenizer
    return lambda ids, skip_special_tokens=True: backend.decode(ids, skip_special_tokens=skip_special_tokens)


def run_detokenizer_process(model_path: str | None, in_addr: str, out_addr: str) -> None:
    logging.basicConfig(level=logging.INFO)
    tok = load_tokenizer(model_path)
    ctx = zmq.Context()
    recv = ctx.socket(zmq.PULL)
    recv.bind(in_addr)
    send = ctx.socket(zmq.PUSH)
    send.connect(out_addr)
    detok = Detokenizer(fast_decode(tok))
    while True:
        msg = detokenizer_decoder.decode(recv.recv())
        if isinstance(msg, RequestMeta):
            detok.register(msg)
        elif isinstance(msg, TokenBatch):
            send.send(encode(detok.step_batch(msg)))
        elif isinstance(msg, (ControlReply, ErrorOut)):
            send.send(encode(msg))
