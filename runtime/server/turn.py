"""One assistant turn on the engine, the path that chat completions, the Responses API and the
Messages API share: a chat request becomes the V4 prompt and its engine calls; the generations
come back parsed (whole or streamed) with honest finish reasons and reasoning-token counts.

Tool calls are parsed in `whole_calls` mode, so a call reaches a client only once its invoke is
closed, streamed or not, and a call cut off by the token limit is never reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request

from ...scheduler.grammar import GrammarError
from ..encoding import Event, ParsedCompletion, StreamingParser, ToolCallEnd, collect
from .chat_prompt import ChatPrompt, build_chat_prompt
from .errors import invalid
from .models import ChatCompletionRequest
from .params import resolve_max_tokens, sampling_params
from .runner import Call, expand, generate, stream
from .state import ServerState
from .usage import finish_reason, with_reasoning


@dataclass
class Turn:
    prompt: ChatPrompt
    calls: list[Call]  # one per choice


@dataclass
class Finish:
    """How a choice ended."""

    reason: str                 # "stop" | "length" | "tool_calls" (or the engine's own kind, e.g. "abort")
    matched: int | str | None   # the stop token id or stop string that ended it, if any
    meta: dict                  # the engine's meta_info plus `reasoning_tokens`


@dataclass
class Choice:
    """A finished choice: its events (as a stream would have sent them) and what they spell."""

    events: list[Event]
    parsed: ParsedCompletion
    finish: Finish
    out: dict  # the engine output: text, output_ids, meta_info


@dataclass
class Update:
    """What one engine chunk of a streamed choice adds; `finish` is set on its last update."""

    index: int
    events: list[Event]
    out: dict
    finish: Finish | None


def prepare(state: ServerState, req: ChatCompletionRequest) -> Turn:
    """The prompt and engine calls of a chat request; 400 for anything invalid. It encodes and
    tokenizes: run it with `state.offload`."""
    engine = state.ready_engine()
    state.check_model(req.model)
    if req.top_logprobs and not req.logprobs:
        raise invalid("top_logprobs needs logprobs=true", "top_logprobs")
    try:
        prompt = build_chat_prompt(req, state.settings.default_thinking)
    except GrammarError as exc:
        raise invalid(str(exc), "tools") from None
    ids = state.tokenize(prompt.text, param="messages")
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = resolve_max_tokens(requested, len(ids), state.max_model_len)
    params = sampling_params(req, max_tokens, engine.info["vocab_size"])
    call = Call(ids, params, req.logprobs, req.top_logprobs or 0, grammar=prompt.grammar)
    return Turn(prompt, expand(call, req.n))


class ChoiceParser:
    """One choice's parsing: engine chunks (or a whole output, as one chunk) in, updates out."""

    def __init__(self, prompt: ChatPrompt, call: Call, index: int = 0) -> None:
        self.index, self._call, self._thinking = index, call, prompt.thinking
        self._parser = StreamingParser(prompt.thinking, prompt.parse_tools, whole_calls=True)
        self._output_ids: list[int] = []
        self._has_calls = False

    def update(self, out: dict) -> Update:
        meta = out["meta_info"]
        self._output_ids += out["output_ids"]
        done = meta["finish_reason"] is not None
        events = self._parser.feed(out["text"]) + (self._parser.finish() if done else [])
        self._has_calls |= any(isinstance(e, ToolCallEnd) for e in events)
        return Update(self.index, events, out, self._finish(meta) if done else None)

    def whole(self, out: dict) -> Choice:
        """A finished output parsed at once."""
        update = self.update(out)
        parsed = collect(update.events, self._thinking, self._parser.ended_in_tool_calls)
        return Choice(update.events, parsed, update.finish, out)

    def _finish(self, meta: dict) -> Finish:
        reason = finish_reason(meta, self._has_calls, self._parser.ended_in_tool_calls)
        return Finish(reason, (meta.get("finish_reason") or {}).get("matched"),
                      with_reasoning(meta, self._call.input_ids, self._output_ids))


async def complete(state: ServerState, http: Request, turn: Turn) -> list[Choice]:
    """Every choice run to its end (aborted if the client disconnects)."""
    outs = await generate(state, http, turn.calls)
    return [ChoiceParser(turn.prompt, call).whole(out) for call, out in zip(turn.calls, outs)]


async def prepend(first: Update, rest: AsyncIterator[Update]) -> AsyncIterator[Update]:
    """`first` (pulled early, so that errors come before any event is sent), then `rest`."""
    yield first
    async for item in rest:
        yield item


async def updates(state: ServerState, turn: Turn) -> AsyncIterator[Update]:
    """The choices' parsed events as the engine streams them, interleaved. Admission and
    parameter errors are raised by the first iteration, before anything is sent."""
    parsers = [ChoiceParser(turn.prompt, call, i) for i, call in enumerate(turn.calls)]
    source = stream(state, turn.calls)
    try:
        async for index, out in source:
            yield parsers[index].update(out)
    finally:
        await source.aclose()
