"""`/v1/completions`: raw prompts (text or token ids), echo, logprobs."""

from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Request

from .errors import invalid
from .logprobs import TokenTexts, completion_logprobs
from .models import CompletionRequest
from .params import resolve_max_tokens, response_format_grammar, sampling_params
from .runner import Call, expand, generate, stream
from .sse import event, start_stream
from .state import ServerState, get_state
from .usage import add_usage, finish_reason, usage, with_reasoning

router = APIRouter()


def _prompts(prompt: str | list) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise invalid("prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        return list(prompt)
    raise invalid("prompt must be a string, a list of strings, a list of token ids or a list of such lists",
                  "prompt")


def _prepare(state: ServerState, body: CompletionRequest) -> list[list[Call]]:
    engine = state.ready_engine()
    state.check_model(body.model)
    if body.suffix:
        raise invalid("suffix is not supported by DeepSeek-V4 models", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise invalid("best_of is not supported (only best_of == n)", "best_of")
    grammar = response_format_grammar(body.response_format, None)
    vocab = engine.info["vocab_size"]
    out = []
    for prompt in _prompts(body.prompt):
        ids = state.tokenize(prompt) if isinstance(prompt, str) else prompt
        if not ids:
            raise invalid("a prompt must have at least one token", "prompt")
        if any(not 0 <= t < vocab for t in ids):  # before anything decodes them (echo)
            raise invalid(f"prompt has a token id outside the vocabulary (0..{vocab - 1})", "prompt")
        max_tokens = resolve_max_tokens(body.max_tokens if body.max_tokens is not None else 16, len(ids),
                                        state.max_model_len)
        params = sampling_params(body, max_tokens, engine.info["vocab_size"])
        wants = body.logprobs is not None
        call = Call(ids, params, wants, body.logprobs or 0, 0 if wants and body.echo else -1, grammar)
        out.append(expand(call, body.n))
    return out


def _choice_logprobs(texts: TokenTexts, echo: bool, call: Call, out: dict) -> dict:
    """Logprobs of the tokens in `out`, preceded by the prompt's when echoing it."""
    meta = out["meta_info"]
    ids, lps, tops = out["output_ids"], meta.get("output_token_logprobs", []), meta.get("output_top_logprobs", [])
    if echo:
        ids = call.input_ids + ids
        lps = meta["input_token_logprobs"] + lps
        tops = meta["input_top_logprobs"] + tops
    return completion_logprobs(texts, ids, lps, tops)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http: Request):
    state = get_state(http)
    groups = await state.offload(_prepare, state, body)
    calls = [c for g in groups for c in g]
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    tokenizer = state.ready_engine().tokenizer
    texts = TokenTexts(tokenizer)
    echo = await state.offload(lambda: [tokenizer.decode(c.input_ids) if body.echo else "" for c in calls])
    if body.stream:
        return await start_stream(_events(state, body, calls, echo, rid, created, texts))
    outs = await generate(state, http, calls)
    choices = [{"index": i, "text": echo[i] + out["text"],
                "logprobs": None if body.logprobs is None else _choice_logprobs(texts, body.echo, calls[i], out),
                "finish_reason": finish_reason(out["meta_info"])} for i, out in enumerate(outs)]
    metas = [with_reasoning(o["meta_info"], c.input_ids, o["output_ids"]) for o, c in zip(outs, calls)]
    return {"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": _sum_usage(metas, body.n)}


def _sum_usage(metas: list[dict], n: int) -> dict:
    """Usage of a batch: each prompt's usage (its `n` choices are consecutive), summed."""
    return add_usage([usage(metas[i:i + n]) for i in range(0, len(metas), n)])


async def _events(state: ServerState, body: CompletionRequest, calls: list[Call], echo: list[str], rid: str,
                  created: int, texts: TokenTexts) -> AsyncIterator[str]:
    def chunk(index: int, text: str, logprobs: dict | None, finish: str | None) -> str:
        return event({"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                      "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]})

    source = stream(state, calls)
    metas: dict[int, dict] = {}
    output_ids: list[list[int]] = [[] for _ in calls]
    try:
        started: set[int] = set()
        async for index, out in source:
            meta = out["meta_info"]
            first = index not in started
            started.add(index)
            output_ids[index] += out["output_ids"]
            prefix = echo[index] if first else ""
            logprobs = None
            if body.logprobs is not None:
                logprobs = _choice_logprobs(texts, first and body.echo, calls[index], out)
            finish = finish_reason(meta) if meta["finish_reason"] is not None else None
            if finish:
                metas[index] = with_reasoning(meta, calls[index].input_ids, output_ids[index])
            yield chunk(index, prefix + out["text"], logprobs, finish)
        if body.stream_options and body.stream_options.include_usage:
            yield event({"id": rid, "object": "text_completion", "created": created, "model": state.model_name,
                         "choices": [], "usage": _sum_usage([metas[i] for i in sorted(metas)], body.n)})
    finally:
        await source.aclose()
