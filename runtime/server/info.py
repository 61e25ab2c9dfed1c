"""Small routes: health, models, version, metrics, tokenize / detokenize."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .chat_prompt import build_chat_prompt
from .errors import invalid
from .models import ChatCompletionRequest, DetokenizeRequest, TokenizeRequest
from .state import ServerState, banyan_version, get_state

router = APIRouter()


@router.get("/health")
async def health(http: Request):
    reason = get_state(http).unavailable()
    if reason is not None:
        return JSONResponse({"status": reason}, status_code=503, headers={"Retry-After": "5"})
    return {"status": "ok"}


@router.get("/version")
async def version_route():
    return {"version": banyan_version()}


@router.get("/v1/models")
async def models(http: Request):
    state = get_state(http)
    card = {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "banyan",
            "root": state.options.model_path, "parent": None}
    if state.engine is not None:
        card["max_model_len"] = state.max_model_len
    return {"object": "list", "data": [card]}


@router.get("/v1/models/{name:path}")
async def model_card(name: str, http: Request):
    state = get_state(http)
    state.check_model(name)
    return (await models(http))["data"][0]


@router.get("/metrics")
async def metrics(http: Request):
    body = await asyncio.to_thread(get_state(http).metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, http: Request):
    state = get_state(http)
    state.ready_engine()
    state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise invalid("pass exactly one of prompt or messages", "prompt")
    tokens = await state.offload(_tokens, state, body)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": state.max_model_len}


def _tokens(state: ServerState, body: TokenizeRequest) -> list[int]:
    if body.messages is None:
        return state.tokenize(body.prompt, body.add_special_tokens)
    try:
        chat = ChatCompletionRequest(messages=body.messages, chat_template_kwargs=body.chat_template_kwargs)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise invalid(f"messages: {first['msg']}", "messages") from None
    return state.tokenize(build_chat_prompt(chat, state.settings.default_thinking).text, param="messages")


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, http: Request):
    state = get_state(http)
    engine = state.ready_engine()
    state.check_model(body.model)
    vocab = engine.info["vocab_size"]
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise invalid(f"token ids outside the vocabulary: {bad[:5]}", "tokens")
    return {"prompt": await state.offload(engine.tokenizer.decode, body.tokens)}
