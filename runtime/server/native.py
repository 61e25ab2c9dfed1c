"""SGLang-compatible native API: `/generate`, `/model_info` (`/get_model_info`), `/server_info`, `/flush_cache`.

`/generate` takes `text` or `input_ids` (one prompt or a batch), SGLang's `sampling_params`
(including `regex`, `json_schema`, `ebnf` and `structural_tag`), and the logprob switches; it answers with
`text` and `meta_info` in SGLang's shapes (logprobs as `[logprob, token_id, text]`). A stream
sends the cumulative text so far in each event, as SGLang does.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

import msgspec
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import JSONResponse

from ...scheduler.grammar import GrammarSpec
from .errors import invalid
from .logprobs import TokenTexts, native_logprobs, native_top_logprobs
from .runner import Call, ClientGone, expand, generate, stream
from .sse import event, start_stream
from .state import ServerState, banyan_version, get_state

router = APIRouter()

_SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                  "frequency_penalty", "repetition_penalty", "stop", "stop_token_ids", "ignore_eos",
                  "skip_special_tokens", "n", "logit_bias", "seed", "min_new_tokens", "stop_regex"}
_GRAMMAR_KEYS = {"regex": "regex", "json_schema": "json_schema", "ebnf": "ebnf", "structural_tag": "structural_tag"}
_IGNORED_KEYS = {"no_stop_trim", "spaces_between_special_tokens", "custom_params", "stream_interval"}


def _sampling(raw: Any) -> tuple[dict, GrammarSpec | None]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise invalid("sampling_params must be an object", "sampling_params")
    params, grammar = {}, None
    for key, value in raw.items():
        if key in _SAMPLING_KEYS:
            params[key] = value
        elif key == "sampling_seed":
            params["seed"] = value
        elif key in _GRAMMAR_KEYS:
            if value is None:
                continue
            if grammar is not None:
                raise invalid("only one of regex, json_schema, ebnf and structural_tag may be set", f"sampling_params.{key}")
            text = value if isinstance(value, str) else json.dumps(value)
            grammar = GrammarSpec(_GRAMMAR_KEYS[key], text)
        elif key not in _IGNORED_KEYS:
            raise invalid(f"unknown sampling parameter {key!r}", f"sampling_params.{key}")
    for key in ("stop", "stop_regex"):
        if isinstance(params.get(key), str):
            params[key] = [params[key]]
    if "logit_bias" in params:
        try:
            params["logit_bias"] = {int(k): v for k, v in params["logit_bias"].items()}
        except (AttributeError, TypeError, ValueError):
            raise invalid("sampling_params.logit_bias must map token ids to biases",
                          "sampling_params.logit_bias") from None
    return params, grammar


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer", name)
    return value


def _per_prompt(value: Any, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise invalid(f"{name} has {len(value)} entries for {count} prompts", name)
        return value
    return [value] * count


def _calls(state: ServerState, body: dict) -> tuple[list[list[Call]], bool]:
    """One list of calls (the n samples) per prompt, and whether the request was batched."""
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise invalid("pass exactly one of text or input_ids", "text")
    if text is not None:
        batched = isinstance(text, list)
        texts = text if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise invalid("text must be a string or a list of strings", "text")
        prompts = [state.tokenize(t, param="text") for t in texts]
    else:
        if not isinstance(input_ids, list):
            raise invalid("input_ids must be a list of token ids or a list of such lists", "input_ids")
        batched = bool(input_ids) and isinstance(input_ids[0], list)
        prompts = input_ids if batched else [input_ids]
    if any(not isinstance(p, list) or not p for p in prompts):
        raise invalid("every prompt needs at least one token", "text" if text is not None else "input_ids")
    count = len(prompts)
    samplings = _per_prompt(body.get("sampling_params"), count, "sampling_params")
    logprob = _per_prompt(body.get("return_logprob", False), count, "return_logprob")
    starts = _per_prompt(body.get("logprob_start_len", -1), count, "logprob_start_len")
    tops = _per_prompt(body.get("top_logprobs_num", 0), count, "top_logprobs_num")
    groups = []
    for ids, sampling, want, start, top in zip(prompts, samplings, logprob, starts, tops):
        params, grammar = _sampling(sampling)
        params.setdefault("max_new_tokens", 128)
        n = params.pop("n", 1)
        if not isinstance(n, int) or n < 1:
            raise invalid("sampling_params.n must be a positive integer", "sampling_params.n")
        start = -1 if start is None else _int(start, "logprob_start_len")
        if start < 0 or not want:
            start = -1  # SGLang's default: logprobs of the completion only
        top = 0 if top is None else _int(top, "top_logprobs_num")
        groups.append(expand(Call(list(ids), params, bool(want), top, start, grammar), n))
    return groups, batched


def _finish(meta: dict) -> dict | None:
    reason = meta["finish_reason"]
    if reason is not None and reason.get("type") == "length":
        return {**reason, "length": meta["completion_tokens"]}
    return reason


def _response(out: dict, call: Call, texts: TokenTexts, with_text: bool, started: float) -> dict:
    meta = out["meta_info"]
    info = {"id": meta["id"], "prompt_tokens": meta["prompt_tokens"], "completion_tokens": meta["completion_tokens"],
            "cached_tokens": meta["cached_tokens"], "finish_reason": _finish(meta),
            "e2e_latency": time.time() - started}
    info.update({k: v for k, v in meta.items() if k.startswith("spec_")})  # speculative decoding counts
    if call.return_logprob:
        start = max(call.logprob_start_len, 0)
        input_ids = call.input_ids[start:] if call.logprob_start_len >= 0 else []
        # like SGLang, the first scored prompt token has no logprob, wherever scoring starts
        input_lps = [None] + meta.get("input_token_logprobs", [])[1:]
        info["input_token_logprobs"] = native_logprobs(texts, input_ids, input_lps, with_text)
        input_tops = [[]] + meta.get("input_top_logprobs", [])[1:]
        info["input_top_logprobs"] = native_top_logprobs(texts, input_tops[:len(input_ids)], with_text)
        info["output_token_logprobs"] = native_logprobs(texts, out["output_ids"],
                                                        meta.get("output_token_logprobs", []), with_text)
        info["output_top_logprobs"] = native_top_logprobs(texts, meta.get("output_top_logprobs", []), with_text)
        info["output_token_logprobs_length"] = len(out["output_ids"])
    return {"text": out["text"], "output_ids": out["output_ids"], "meta_info": info}


@router.post("/generate")
async def generate_route(http: Request):
    state = get_state(http)
    try:
        body = await http.json()
    except ValueError:
        raise invalid("the request body must be JSON") from None
    except ClientDisconnect:  # gone while sending the body
        raise ClientGone() from None
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    groups, batched = await state.offload(_calls, state, body)
    calls = [c for g in groups for c in g]
    texts = TokenTexts(state.ready_engine().tokenizer)
    with_text = bool(body.get("return_text_in_logprobs", False))
    started = time.time()
    if body.get("stream"):
        return await start_stream(_events(state, calls, texts, with_text, started))
    outs = await generate(state, http, calls)
    results = await state.offload(lambda: [_response(o, c, texts, with_text, started)
                                           for o, c in zip(outs, calls)])
    return results if batched or len(results) > 1 else results[0]


async def _events(state: ServerState, calls: list[Call], texts: TokenTexts, with_text: bool,
                  started: float) -> AsyncIterator[str]:
    so_far: dict[int, dict] = {}
    source = stream(state, calls)
    try:
        async for index, chunk in source:
            acc = so_far.setdefault(index, {"text": "", "output_ids": [], "meta_info": {}})
            acc["text"] += chunk["text"]
            acc["output_ids"] += chunk["output_ids"]
            meta = acc["meta_info"]
            for key in ("output_token_logprobs", "output_top_logprobs"):
                meta[key] = meta.get(key, []) + chunk["meta_info"].get(key, [])
            for key in ("input_token_logprobs", "input_top_logprobs"):
                meta[key] = meta.get(key) or chunk["meta_info"].get(key, [])
            meta.update({k: v for k, v in chunk["meta_info"].items() if not k.endswith("logprobs")})
            payload = _response(acc, calls[index], texts, with_text, started)
            payload["index"] = index
            yield event(payload)
    finally:
        await source.aclose()


@router.get("/model_info")
@router.get("/get_model_info")
async def get_model_info(http: Request):
    state = get_state(http)
    return {"model_path": state.options.model_path, "tokenizer_path": state.options.model_path,
            "served_model_name": state.model_name, "is_generation": True, "model_type": "deepseek_v4"}


@router.get("/server_info")
@router.get("/get_server_info")
async def server_info(http: Request):
    state = get_state(http)
    info = {**msgspec.to_builtins(state.options), **msgspec.to_builtins(state.settings),
            "served_model_name": state.model_name, "version": banyan_version()}
    info.pop("api_key", None)
    if state.engine is not None:
        info["max_model_len"] = state.max_model_len
        info["page_size"] = state.engine.info["page_size"]  # resolved when the option left it to the model
        info["footprint"] = state.engine.info["footprint"]  # resident weight bytes, KV bytes per token
        info["processes"] = state.engine.pids
        info["internal_states"] = [await asyncio.to_thread(state.engine.stats)]
    return info


@router.get("/flush_cache")
@router.post("/flush_cache")
async def flush_cache(http: Request):
    engine = get_state(http).ready_engine()
    if await asyncio.to_thread(engine.flush_cache):
        return JSONResponse({"message": "Cache flushed."})
    raise invalid("cannot flush the cache while requests are running")
