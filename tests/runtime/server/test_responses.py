"""`/v1/responses` through the openai client (`create`, `stream`, `parse`) and the openai-agents
Runner on its default (Responses) model, against a live server."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from pydantic import BaseModel

from .conftest import API_KEY

NOW = {"type": "function", "name": "now", "description": "The time",
       "parameters": {"type": "object", "properties": {}}}
ASK = dict(model="banyan-tiny", input="Say hi", instructions="Be terse.", max_output_tokens=4, temperature=0)
FORCED = dict(model="banyan-tiny", input="What time is it?", tools=[NOW], max_output_tokens=120, temperature=0,
              tool_choice={"type": "function", "name": "now"})


def test_text_response_is_the_chat_turn_with_responses_shapes(client):
    r = client.responses.create(**ASK)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "banyan-tiny"
    assert [o.type for o in r.output] == ["message"] and r.output[0].role == "assistant"
    assert (r.status == "incomplete") == (r.usage.output_tokens == 4)
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    chat = client.chat.completions.create(model="banyan-tiny", max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi"}])
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0 and r.store is False


@pytest.mark.parametrize("effort", ["none", "high"])
def test_stream_events_spell_the_created_response(client, effort):
    whole = client.responses.create(reasoning={"effort": effort}, **ASK)
    with client.responses.stream(reasoning={"effort": effort}, **ASK) as stream:
        events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    final = events[-1].response
    assert events[-1].type == f"response.{whole.status}" and final.id == events[0].response.id
    kinds = {"none": ("message", "response.output_text.delta"), "high": ("reasoning", "response.reasoning_text.delta")}
    item, delta = kinds[effort]
    assert [o.type for o in final.output] == [o.type for o in whole.output] == [item]
    streamed = "".join(e.delta for e in events if e.type == delta)
    assert streamed == final.output[0].content[0].text == whole.output[0].content[0].text
    if effort == "none":  # the helper's running snapshot is built from the added item and part events
        assert [e for e in events if e.type == delta][-1].snapshot == streamed
    reasoning = whole.usage.output_tokens_details.reasoning_tokens
    assert reasoning == (whole.usage.output_tokens if effort == "high" else 0)
    assert final.usage.output_tokens_details.reasoning_tokens == reasoning


def test_forced_function_call_streams_and_round_trips(client):
    r = client.responses.create(**FORCED)
    assert r.status == "completed" and [o.type for o in r.output] == ["function_call"]
    call = r.output[0]
    assert call.name == "now" and json.loads(call.arguments) == {} and call.call_id.startswith("call_")
    with client.responses.stream(**FORCED) as stream:
        events = list(stream)
        final = stream.get_final_response()
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [o.name for o in final.output] == ["now"] and args == done[0].arguments == final.output[0].arguments
    follow = client.responses.create(model="banyan-tiny", tools=[NOW], max_output_tokens=2, input=[
        {"role": "user", "content": "What time is it?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}])
    assert follow.usage.input_tokens > r.usage.input_tokens


class Verdict(BaseModel):
    ok: bool


def test_parse_with_a_json_schema_text_format(client):
    r = client.responses.parse(model="banyan-tiny", input="Is it fine?", text_format=Verdict, max_output_tokens=30,
                               temperature=0)
    assert r.status == "completed" and isinstance(r.output_parsed, Verdict)


@pytest.mark.parametrize("kwargs, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": []}, "input"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
])
def test_invalid_requests_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**{**ASK, **kwargs})
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"


def test_openai_agents_runner_calls_a_tool(server):
    from agents import (Agent, ModelSettings, Runner, ToolCallItem, function_tool, set_default_openai_client,
                        set_tracing_disabled)

    @function_tool
    def now() -> str:
        """The time."""
        return "12:00"

    async def run():
        set_tracing_disabled(True)
        set_default_openai_client(openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0,
                                                     timeout=120), use_for_tracing=False)
        # the default model is the Responses one; a random model only calls a tool and stops when made to
        agent = Agent(name="clock", instructions="Be brief.", model="banyan-tiny", tools=[now],
                      model_settings=ModelSettings(tool_choice="now", max_tokens=120),
                      tool_use_behavior="stop_on_first_tool")
        result = await Runner.run(agent, "What time is it?")
        streamed = Runner.run_streamed(agent, "What time is it?")
        kinds = {event.type async for event in streamed.stream_events()}
        return result, streamed, kinds

    result, streamed, kinds = asyncio.run(run())
    assert result.final_output == streamed.final_output == "12:00"
    calls = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
    assert [c.name for c in calls] == ["now"] and json.loads(calls[0].arguments) == {}
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert result.context_wrapper.usage.requests == 1 and result.context_wrapper.usage.output_tokens > 10


def test_unset_fields_sent_as_null_are_accepted(server):
    """sglang-router forwards a Responses request with every unset field as null."""
    body = {"model": "banyan-tiny", "input": "hi", "max_output_tokens": 1, "stream": None, "store": None,
            "temperature": None, "tools": None, "tool_choice": None, "reasoning": None, "text": None}
    with server.http() as http:
        r = http.post("/v1/responses", json=body)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 1
