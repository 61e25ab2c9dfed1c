"""The detokenizer process: incremental, UTF-8-safe detokenization and stop strings."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import zmq

from .protocol import (ControlReply, ErrorOut, RequestMeta, TextOut, TokenBatch, TokenOut, detokenizer_decoder,
                       encode)
from .tokenizer import load_tokenizer

REPLACEMENT = "\ufffd"


@dataclass
class DecodeState:
    stop: list[str] = field(default_factory=list)
    skip_special_tokens: bool = True
    stop_regex: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the text already sent
    stopped: bool = False


class Detokenizer:
    def __init__(self, decode) -> None:
        self.decode = decode
        self.states: dict[str, DecodeState] = {}

    def register(self, meta: RequestMeta) -> None:
        self.states[meta.rid] = DecodeState(list(meta.stop), meta.skip_special_tokens, list(meta.stop_regex))

    def step(self, out: TokenOut) -> TextOut:
        st = self.states.setdefault(out.rid, DecodeState())
        new_ids = [out.token] if out.token is not None else []
        st.ids += new_ids
        text = self.decode(st.ids, skip_special_tokens=st.skip_special_tokens)
        finished = out.finish is not None
        cut = len(text)
        hold = not finished and text.endswith(REPLACEMENT)  # an incomplete UTF-8 sequence
        for s in st.stop:
            i = text.find(s)
            if i != -1:
                cut, st.stopped = min(cut, i), True
        for pattern in st.stop_regex:
            match = re.search(pattern, text)
            if match:
                cut, st.stopped = min(cut, match.start()), True
        if not st.stopped and not finished and st.stop:
            # hold back a tail that could still become a stop string
            longest = max(len(s) for s in st.stop)
            for k in range(min(longest - 1, len(text)), 0, -1):
                if any(s.startswith(text[-k:]) for s in st.stop):
                    cut = min(cut, len(text) - k)
                    break
        delta = "" if hold else text[st.sent:max(cut, st.sent)]
        st.sent += len(delta)
        if finished:
            del self.states[out.rid]
        return TextOut(out.rid, delta, new_ids, [out.logprob] if new_ids else [],
                       [out.top_logprobs] if new_ids else [], out.finish, out.prompt_tokens, out.cached_tokens,
                       out.completion_tokens, out.input_logprobs, out.input_top_logprobs)


def run_detokenizer_process(model_path: str | None, in_addr: str, out_addr: str) -> None:
    logging.basicConfig(level=logging.INFO)
    tok = load_tokenizer(model_path)
    ctx = zmq.Context()
    recv = ctx.socket(zmq.PULL)
    recv.bind(in_addr)
    send = ctx.socket(zmq.PUSH)
    send.connect(out_addr)
    detok = Detokenizer(tok.decode)
    while True:
        msg = detokenizer_decoder.decode(recv.recv())
        if isinstance(msg, RequestMeta):
            detok.register(msg)
        elif isinstance(msg, TokenBatch):
            for item in msg.items:
                send.send(encode(detok.step(item)))
        elif isinstance(msg, (ControlReply, ErrorOut)):
            send.send(encode(msg))
