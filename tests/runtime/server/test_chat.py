"""`/v1/chat/completions` through the openai client against a live server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .conftest import API_KEY

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
GREEDY = {"temperature": 0, "max_tokens": 8}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
        "metric": {"type": "boolean"}},
        "required": ["city", "days", "metric"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


def prompt_text(server, messages, **kwargs) -> str:
    with server.http() as http:
        r = http.post("/tokenize", json={"messages": messages, **kwargs})
        assert r.status_code == 200, r.text
        return http.post("/detokenize", json={"tokens": r.json()["tokens"]}).json()["prompt"]


def test_health_was_503_while_starting_and_ready_line_logged(server):
    assert server.saw_starting
    assert "Banyan is ready" in server.log() and server.url.split("//")[1] in server.log()


def test_chat_completion_shape_and_usage(client):
    r = client.chat.completions.create(model="banyan-tiny", messages=MSGS, **GREEDY)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == "banyan-tiny"
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="banyan-tiny", messages=MSGS, **GREEDY)
    assert again.choices[0].message.content == choice.message.content


def test_cached_tokens_reported_for_a_shared_prefix(client):
    long_system = {"role": "system", "content": "Background: " + " ".join(f"fact{i}" for i in range(200))}
    ask = lambda q: client.chat.completions.create(  # noqa: E731
        model="banyan-tiny", messages=[long_system, {"role": "user", "content": q}], **GREEDY)
    ask("first question")
    second = ask("second question")
    assert second.usage.prompt_tokens > 256
    assert second.usage.prompt_tokens_details.cached_tokens >= 256


def test_streaming_matches_non_streaming(client):
    full = client.chat.completions.create(model="banyan-tiny", messages=MSGS, **GREEDY)
    chunks = list(client.chat.completions.create(model="banyan-tiny", messages=MSGS, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_reasoning_modes_render_and_split(server, client):
    chat = prompt_text(server, MSGS)
    thinking = prompt_text(server, MSGS, chat_template_kwargs={"thinking": True})
    assert chat.endswith("<｜Assistant｜></think>") and thinking.endswith("<｜Assistant｜><think>")
    # thinking: the output before </think> is reasoning; a forced </think> ends it at once
    r = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=6, temperature=0,
                                       extra_body={"chat_template_kwargs": {"thinking": True}})
    msg = r.choices[0].message
    assert msg.reasoning_content is not None and msg.content == "" and len(msg.reasoning_content) > 0
    r = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=3, temperature=0,
                                       logit_bias={"128822": 100}, extra_body={"thinking": {"type": "enabled"}})
    assert r.choices[0].message.reasoning_content == "" and r.choices[0].message.content == "</think></think>"
    # non-think answers carry no reasoning
    r = client.chat.completions.create(model="banyan-tiny", messages=MSGS, **GREEDY)
    assert r.choices[0].message.reasoning_content is None
    # Think Max adds its prefix; "high" renders like plain thinking
    high = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=1, reasoning_effort="high")
    top = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=1, reasoning_effort="max")
    assert top.usage.prompt_tokens > high.usage.prompt_tokens + 40
    assert top.choices[0].message.reasoning_content is not None
    off = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=1, reasoning_effort="none")
    assert off.choices[0].message.reasoning_content is None


def test_n_choices_logprobs_and_stop(client):
    r = client.chat.completions.create(model="banyan-tiny", messages=MSGS, n=3, max_tokens=5, temperature=1.0,
                                       seed=7, logprobs=True, top_logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        lps = c.logprobs.content
        assert len(lps) == r.usage.completion_tokens // 3 or len(lps) <= 5
        assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in lps)
        assert all(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in lps)
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    first = client.chat.completions.create(model="banyan-tiny", messages=MSGS, **GREEDY).choices[0].message.content
    stop = first[2:4]
    stopped = client.chat.completions.create(model="banyan-tiny", messages=MSGS, stop=[stop], **GREEDY)
    assert stopped.choices[0].finish_reason == "stop" and stop not in stopped.choices[0].message.content
    assert first.startswith(stopped.choices[0].message.content)


def test_json_schema_response_validates(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "tag": {"type": "string", "enum": ["a", "b"]}},
              "required": ["ok", "n", "tag"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="banyan-tiny", messages=MSGS, max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"ok", "n", "tag"} and isinstance(data["ok"], bool) and isinstance(data["n"], int)
    assert data["tag"] in ("a", "b")
    obj = client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=60, temperature=0,
                                         response_format={"type": "json_object"})
    assert obj.choices[0].finish_reason == "length" or isinstance(json.loads(obj.choices[0].message.content), dict)


def test_json_schema_applies_only_after_think_in_thinking_mode(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.chat.completions.create(
        model="banyan-tiny", messages=MSGS, max_tokens=40, temperature=0, logit_bias={"128822": 100},
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        extra_body={"chat_template_kwargs": {"thinking": True}})
    msg = r.choices[0].message
    assert msg.reasoning_content == ""  # </think> was sampled, so the grammar was not active before it
    assert isinstance(json.loads(msg.content)["ok"], bool)


def test_forced_tool_call_is_parsed(client):
    r = client.chat.completions.create(model="banyan-tiny", messages=MSGS, tools=[WEATHER, CLOCK],
                                       tool_choice="required", max_tokens=120, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        args = json.loads(call.function.arguments)
        assert call.id.startswith("call_") and call.type == "function"
        if call.function.name == "get_weather":
            assert args["city"] in ("Paris", "Oslo") and 1 <= args["days"] <= 9 or isinstance(args["days"], int)
            assert isinstance(args["metric"], bool)
        else:
            assert call.function.name == "get_time" and args["zone"] in ("UTC", "CET")
    named = client.chat.completions.create(
        model="banyan-tiny", messages=MSGS, tools=[WEATHER, CLOCK], max_tokens=120, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls][0] == "get_time"


def test_streamed_tool_call_sends_name_once_then_arguments(client):
    kwargs = dict(model="banyan-tiny", messages=MSGS, tools=[CLOCK], max_tokens=120, temperature=0,
                  tool_choice={"type": "function", "function": {"name": "get_time"}})
    full = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    starts = [d for d in deltas if d.function and d.function.name]
    assert len(starts) == len(full) and starts[0].function.name == "get_time" and starts[0].id
    args = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert json.loads(args) == json.loads(full[0].function.arguments)
    assert all("DSML" not in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_history_round_trip_is_accepted(client):
    history = MSGS + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{\"zone\": \"UTC\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    r = client.chat.completions.create(model="banyan-tiny", messages=history, tools=[CLOCK], **GREEDY)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"n": 0}, "n"),
    ({"extra_body": {"reasoning_effort": "extreme"}}, "reasoning_effort"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
])
def test_invalid_parameters_are_400_with_openai_body(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=4, **kwargs)
    err = info.value.body
    assert info.value.status_code == 400 and param in (err.get("param") or "") + err["message"]
    assert err["type"] == "invalid_request_error"


def test_context_length_unknown_model_and_api_key(server, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=10_000_000)
    assert "maximum context length" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MSGS, max_tokens=2)
    assert info.value.body["code"] == "model_not_found"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="banyan-tiny", messages=MSGS, max_tokens=2)
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": "nope"},
                   headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
