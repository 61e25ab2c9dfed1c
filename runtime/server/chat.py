"""`/v1/chat/completions`: V4 encoding in, reasoning / content / tool calls out."""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request

from ...scheduler.grammar import GrammarError
from ..encoding import ParsedCompletion, StreamingParser, parse_completion
from ..encoding import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallStart
from .chat_prompt import ChatPrompt, build_chat_prompt
from .errors import invalid
from .logprobs import TokenTexts, chat_logprobs
from .models import ChatCompletionRequest
from .params import resolve_max_tokens, sampling_params
from .runner import Call, expand, generate, stream
from .sse import event, start_stream
from .state import ServerState, get_state
from .usage import finish_reason, usage

router = APIRouter()


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _prepare(state: ServerState, body: ChatCompletionRequest) -> tuple[ChatPrompt, list[Call]]:
    engine = state.ready_engine()
    state.check_model(body.model)
    if body.top_logprobs and not body.logprobs:
        raise invalid("top_logprobs needs logprobs=true", "top_logprobs")
    try:
        prompt = build_chat_prompt(body, state.settings.default_thinking)
    except GrammarError as exc:
        raise invalid(str(exc), "tools") from None
    ids = engine.tokenizer.encode(prompt.text, add_special_tokens=False)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = resolve_max_tokens(requested, len(ids), state.max_model_len)
    params = sampling_params(body, max_tokens, engine.info["vocab_size"])
    call = Call(ids, params, body.logprobs, body.top_logprobs or 0, grammar=prompt.grammar)
    return prompt, expand(call, body.n)


def _message(parsed: ParsedCompletion) -> dict:
    message: dict = {"role": "assistant", "content": parsed.content, "reasoning_content": parsed.reasoning_content}
    if parsed.tool_calls:
        message["content"] = parsed.content or None
        message["tool_calls"] = [{"id": _call_id(), "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in parsed.tool_calls]
    return message


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, http: Request):
    state = get_state(http)
    prompt, calls = _prepare(state, body)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    texts = TokenTexts(state.ready_engine().tokenizer)
    if body.stream:
        return await start_stream(_events(state, body, prompt, calls, rid, created, texts))
    outs = await generate(state, http, calls)
    choices = []
    for i, out in enumerate(outs):
        parsed = parse_completion(out["text"], prompt.thinking, prompt.parse_tools)
        meta = out["meta_info"]
        choice = {"index": i, "message": _message(parsed), "logprobs": None,
                  "finish_reason": finish_reason(meta, bool(parsed.tool_calls))}
        if body.logprobs:
            choice["logprobs"] = {"content": chat_logprobs(texts, out["output_ids"], meta["output_token_logprobs"],
                                                           meta["output_top_logprobs"])}
        choices.append(choice)
    return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": usage([o["meta_info"] for o in outs])}


def _delta(ev, call_ids: dict[int, str]) -> dict:
    if isinstance(ev, ReasoningDelta):
        return {"reasoning_content": ev.text}
    if isinstance(ev, ContentDelta):
        return {"content": ev.text}
    if isinstance(ev, ToolCallStart):
        call_ids[ev.index] = _call_id()
        return {"tool_calls": [{"index": ev.index, "id": call_ids[ev.index], "type": "function",
                                "function": {"name": ev.name, "arguments": ""}}]}
    assert isinstance(ev, ToolCallArgsDelta)
    return {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}


async def _prepend(first, rest: AsyncIterator) -> AsyncIterator:
    yield first
    async for item in rest:
        yield item


async def _events(state: ServerState, body: ChatCompletionRequest, prompt: ChatPrompt, calls: list[Call],
                  rid: str, created: int, texts: TokenTexts) -> AsyncIterator[str]:
    def chunk(index: int, delta: dict, finish: str | None = None, logprobs: list | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
                  "finish_reason": finish}
        return event({"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                      "choices": [choice]})

    source = stream(state, calls)
    try:
        first = await anext(source)  # admission and parameter errors surface before any event
        for i in range(len(calls)):
            yield chunk(i, {"role": "assistant", "content": ""})
        parsers = [StreamingParser(prompt.thinking, prompt.parse_tools) for _ in calls]
        call_ids: list[dict[int, str]] = [{} for _ in calls]
        metas: dict[int, dict] = {}
        async for index, out in _prepend(first, source):
            meta = out["meta_info"]
            finished = meta["finish_reason"] is not None
            events = parsers[index].feed(out["text"]) + (parsers[index].finish() if finished else [])
            logprobs = (chat_logprobs(texts, out["output_ids"], meta["output_token_logprobs"],
                                      meta["output_top_logprobs"]) if body.logprobs and out["output_ids"] else None)
            deltas = [_delta(ev, call_ids[index]) for ev in events] or ([{}] if logprobs else [])
            for k, delta in enumerate(deltas):
                yield chunk(index, delta, logprobs=logprobs if k == 0 else None)
            if finished:
                metas[index] = meta
                yield chunk(index, {}, finish_reason(meta, bool(call_ids[index])))
        if body.stream_options and body.stream_options.include_usage:
            yield event({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": state.model_name, "choices": [], "usage": usage(list(metas.values()))})
    finally:
        await source.aclose()
