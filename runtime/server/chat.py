"""`/v1/chat/completions`: V4 encoding in, reasoning / content / tool calls out."""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request

from ..encoding import ContentDelta, ParsedCompletion, ReasoningDelta, ToolCallArgsDelta, ToolCallStart
from .logprobs import TokenTexts, chat_logprobs
from .models import ChatCompletionRequest
from .sse import event, start_stream
from .state import ServerState, get_state
from .turn import Turn, complete, prepare, prepend, updates
from .usage import usage

router = APIRouter()


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _message(parsed: ParsedCompletion) -> dict:
    message: dict = {"role": "assistant", "content": parsed.content, "reasoning_content": parsed.reasoning_content}
    if parsed.tool_calls:
        message["content"] = parsed.content or None
        message["tool_calls"] = [{"id": call_id(), "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in parsed.tool_calls]
    return message


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, http: Request):
    state = get_state(http)
    turn = await state.offload(prepare, state, body)  # off the event loop: encoding and tokenizing
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    texts = TokenTexts(state.ready_engine().tokenizer)
    if body.stream:
        return await start_stream(_events(state, body, turn, rid, created, texts))
    done = await complete(state, http, turn)
    choices = []
    for i, choice in enumerate(done):
        out, meta = choice.out, choice.out["meta_info"]
        entry = {"index": i, "message": _message(choice.parsed), "logprobs": None,
                 "finish_reason": choice.finish.reason}
        if body.logprobs:
            entry["logprobs"] = {"content": chat_logprobs(texts, out["output_ids"], meta["output_token_logprobs"],
                                                          meta["output_top_logprobs"])}
        choices.append(entry)
    return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": usage([c.finish.meta for c in done])}


def _delta(ev, call_ids: dict[int, str]) -> dict | None:
    if isinstance(ev, ReasoningDelta):
        return {"reasoning_content": ev.text}
    if isinstance(ev, ContentDelta):
        return {"content": ev.text}
    if isinstance(ev, ToolCallStart):
        call_ids[ev.index] = call_id()
        return {"tool_calls": [{"index": ev.index, "id": call_ids[ev.index], "type": "function",
                                "function": {"name": ev.name, "arguments": ""}}]}
    if isinstance(ev, ToolCallArgsDelta):
        return {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}
    return None  # ToolCallEnd: nothing to send


async def _events(state: ServerState, body: ChatCompletionRequest, turn: Turn, rid: str, created: int,
                  texts: TokenTexts) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict, finish: str | None = None, logprobs: list | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
                  "finish_reason": finish}
        return event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                      "choices": [choice]})

    source = updates(state, turn)
    try:
        first = await anext(source)  # admission and parameter errors surface before any event
        for i in range(len(turn.calls)):
            yield chunk(i, {"role": "assistant", "content": ""})
        call_ids: list[dict[int, str]] = [{} for _ in turn.calls]
        metas: dict[int, dict] = {}
        async for update in prepend(first, source):
            out, meta = update.out, update.out["meta_info"]
            logprobs = (chat_logprobs(texts, out["output_ids"], meta["output_token_logprobs"],
                                      meta["output_top_logprobs"]) if body.logprobs and out["output_ids"] else None)
            deltas = [d for ev in update.events if (d := _delta(ev, call_ids[update.index])) is not None]
            for k, delta in enumerate(deltas or ([{}] if logprobs else [])):
                yield chunk(update.index, delta, logprobs=logprobs if k == 0 else None)
            if update.finish is not None:
                metas[update.index] = update.finish.meta
                yield chunk(update.index, {}, update.finish.reason)
        if body.stream_options and body.stream_options.include_usage:
            yield event({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": state.model_name, "choices": [], "usage": usage(list(metas.values()))})
    finally:
        await source.aclose()
