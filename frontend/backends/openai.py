"""`OpenAI`: an OpenAI-compatible server (Banyan's `/v1` routes, DeepSeek's API, ...).

A gen that starts an assistant turn is a `/v1/chat/completions` request with the turn's
messages: reasoning through `chat_template_kwargs.thinking` and `reasoning_effort`, tools and
`tool_choice`, `json_schema` as `response_format`. A gen anywhere else continues the V4 prompt
text with `/v1/completions`. Chat APIs return no prompt logprobs and take no regex, so `select`,
`regex` and `dtype` raise `UnsupportedFeatureError`. Streaming runs stream the server's
deltas (reasoning, content) as they arrive.
"""

from __future__ import annotations

import json
from typing import Any

from ..choices import ChoicesDecision, ChoicesSamplingMethod
from ..errors import UnsupportedFeatureError
from ..sampling import SamplingParams
from .base import Backend, Completion, OnText, TurnRequest, TurnResult, TurnSink
from .http import make_client, request_json, send, sse_events

_OPTIONAL = {"top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": None,
             "ignore_eos": False}


def _sampling(params: SamplingParams) -> dict[str, Any]:
    """The request fields for `params`; what the OpenAI API cannot express raises."""
    for name, feature in (("regex", "regex (and dtype)"), ("ebnf", "EBNF grammars"),
                          ("structural_tag", "structural tags"), ("stop_regex", "stop_regex"),
                          ("min_new_tokens", "min_tokens")):
        if getattr(params, name):
            raise UnsupportedFeatureError(f"{feature} is not supported by the OpenAI backend; use RuntimeEndpoint "
                                          "or LocalEngine")
    body: dict[str, Any] = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                            "top_p": params.top_p}
    body.update({k: getattr(params, k) for k, default in _OPTIONAL.items() if getattr(params, k) != default})
    if params.stop:
        body["stop"] = list(params.stop)
    if params.stop_token_ids:
        body["stop_token_ids"] = list(params.stop_token_ids)
    if params.json_schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": json.loads(params.json_schema)}}
    return body


def _meta(out: dict[str, Any], logprobs: list[list[Any]] | None) -> dict[str, Any]:
    usage = out.get("usage") or {}
    meta = {"id": out.get("id"), "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
            "finish_reason": {"type": out["choices"][0].get("finish_reason")}}
    if logprobs is not None:
        meta["output_token_logprobs"] = logprobs
    return meta


def _merge_tool_call(calls: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    """Add a streamed tool-call fragment (OpenAI sends the id and name once, then arguments)."""
    index = delta.get("index", len(calls))
    while len(calls) <= index:
        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    call, function = calls[index], delta.get("function") or {}
    call["id"] = delta.get("id") or call["id"]
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


def _collect_chat_stream(response, sink: TurnSink) -> dict[str, Any]:
    """A streamed chat completion as the non-streamed reply, feeding `sink` on the way."""
    message: dict[str, Any] = {"content": "", "reasoning_content": "", "tool_calls": []}
    out: dict[str, Any] = {"choices": [{"message": message, "finish_reason": None, "logprobs": {"content": []}}]}
    for chunk in sse_events(response):
        out["id"] = chunk.get("id", out.get("id"))
        out["usage"] = chunk.get("usage") or out.get("usage")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for key, write in (("reasoning_content", sink.reasoning), ("content", sink.content)):
                if delta.get(key):
                    message[key] += delta[key]
                    write(delta[key])
            for call in delta.get("tool_calls") or []:
                _merge_tool_call(message["tool_calls"], call)
            out["choices"][0]["logprobs"]["content"] += (choice.get("logprobs") or {}).get("content") or []
            out["choices"][0]["finish_reason"] = choice.get("finish_reason") or out["choices"][0]["finish_reason"]
    return out


def _collect_completion_stream(response, on_text: OnText) -> dict[str, Any]:
    """A streamed text completion as the non-streamed reply, feeding `on_text` on the way."""
    logprobs: dict[str, list] = {"tokens": [], "token_logprobs": []}
    choice: dict[str, Any] = {"text": "", "finish_reason": None, "logprobs": logprobs}
    out: dict[str, Any] = {"choices": [choice]}
    for chunk in sse_events(response):
        out["id"] = chunk.get("id", out.get("id"))
        out["usage"] = chunk.get("usage") or out.get("usage")
        for part in chunk.get("choices") or []:
            if part.get("text"):
                choice["text"] += part["text"]
                on_text(part["text"])
            for key in logprobs:
                logprobs[key] += (part.get("logprobs") or {}).get(key) or []
            choice["finish_reason"] = part.get("finish_reason") or choice["finish_reason"]
    return out


def _post(client, path: str, body: dict[str, Any], collect, on_delta) -> dict[str, Any]:
    """POST `body`; with `on_delta`, as a stream that `collect` turns into the whole reply."""
    if on_delta is None:
        return request_json(client, "POST", path, body)
    response = send(client, "POST", path, {**body, "stream": True, "stream_options": {"include_usage": True}},
                    stream=True)
    try:
        return collect(response, on_delta)
    finally:
        response.close()


class OpenAI(Backend):
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float | None = 600.0) -> None:
        """`base_url` as the OpenAI client takes it (`http://HOST:PORT/v1`); `model` defaults to the
        server's first model."""
        self._http = make_client(base_url, api_key, timeout)
        self.model = model or request_json(self._http, "GET", "/models")["data"][0]["id"]

    def complete(self, prompt: str, params: SamplingParams, on_text: OnText | None = None) -> Completion:
        body = {"model": self.model, "prompt": prompt, **_sampling(params)}
        if params.return_logprob:
            body["logprobs"] = params.top_logprobs_num
        out = _post(self._http, "/completions", body, _collect_completion_stream, on_text)
        choice = out["choices"][0]
        logprobs = None
        if params.return_logprob:
            lp = choice.get("logprobs") or {}
            logprobs = [[p, None, t] for p, t in zip(lp.get("token_logprobs", []), lp.get("tokens", []))]
        return Completion(choice["text"], _meta(out, logprobs))

    def assistant_turn(self, request: TurnRequest, sink: TurnSink | None = None) -> TurnResult:
        if request.max_thinking_tokens is not None:
            raise UnsupportedFeatureError("max_thinking_tokens (a separate reasoning budget) is not supported by the "
                                          "OpenAI backend; max_tokens covers reasoning and answer")
        params = request.params
        body = {"model": self.model, "messages": request.messages, **_sampling(params),
                "chat_template_kwargs": {"thinking": request.thinking}}
        if request.effort:
            body["reasoning_effort"] = request.effort
        if request.tools:
            body["tools"] = request.tools
            body["tool_choice"] = (request.tool_choice if request.tool_choice in ("auto", "required")
                                   else {"type": "function", "function": {"name": request.tool_choice}})
        if params.return_logprob:
            body.update(logprobs=True, top_logprobs=params.top_logprobs_num or None)
        out = _post(self._http, "/chat/completions", body, _collect_chat_stream, sink)
        choice = out["choices"][0]
        message = choice["message"]
        logprobs = None
        if params.return_logprob:
            logprobs = [[t["logprob"], None, t["token"]] for t in (choice.get("logprobs") or {}).get("content") or []]
        reasoning = (message.get("reasoning_content") or "") if request.thinking else None
        content = message.get("content") or ""
        return TurnResult(content, reasoning, message.get("tool_calls") or [], _meta(out, logprobs))

    def select(self, prompt: str, choices: list[str], method: ChoicesSamplingMethod) -> ChoicesDecision:
        raise UnsupportedFeatureError("select needs prompt logprobs, which the OpenAI chat API does not return; "
                                      "use RuntimeEndpoint or LocalEngine")

    def shutdown(self) -> None:
        self._http.close()
