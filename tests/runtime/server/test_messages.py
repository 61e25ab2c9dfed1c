"""`/v1/messages` through the Anthropic SDK against a live server."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from .conftest import API_KEY

GREEDY = {"temperature": 0}  # the Anthropic SDK no longer types sampling fields; the API still takes them
HI = dict(model="banyan-tiny", max_tokens=4, system="Be terse.", messages=[{"role": "user", "content": "Say hi"}],
          extra_body=GREEDY)
NOW = {"name": "now", "description": "The time", "input_schema": {"type": "object", "properties": {}}}
FORCED = dict(model="banyan-tiny", max_tokens=120, tools=[NOW], tool_choice={"type": "tool", "name": "now"},
              messages=[{"role": "user", "content": "What time is it?"}], extra_body=GREEDY)


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


def test_message_matches_the_chat_turn_and_its_stream(client, claude):
    m = claude.messages.create(**HI)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == "banyan-tiny"
    assert [b.type for b in m.content] == ["text"]
    assert m.stop_reason == ("max_tokens" if m.usage.output_tokens == 4 else "end_turn")
    chat = client.chat.completions.create(model="banyan-tiny", max_tokens=4, temperature=0, messages=[
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi"}])
    assert m.content[0].text == chat.choices[0].message.content
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == chat.usage.prompt_tokens
    with claude.messages.stream(**HI) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    assert final.content[0].text == m.content[0].text and final.stop_reason == m.stop_reason
    assert final.usage.output_tokens == m.usage.output_tokens


def test_thinking_comes_back_as_thinking_blocks(claude):
    m = claude.messages.create(**{**HI, "thinking": {"type": "enabled", "budget_tokens": 3}})
    assert [b.type for b in m.content] == ["thinking"] and m.content[0].thinking
    assert m.usage.output_tokens_details.thinking_tokens == m.usage.output_tokens == 4
    off = claude.messages.create(**{**HI, "thinking": {"type": "disabled"}})
    assert [b.type for b in off.content] == ["text"] and off.usage.output_tokens_details.thinking_tokens == 0


def test_forced_tool_use_streams_and_round_trips(claude):
    m = claude.messages.create(**FORCED)
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use"]
    use = m.content[0]
    assert use.name == "now" and use.input == {} and use.id.startswith("toolu_")
    with claude.messages.stream(**FORCED) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert [(b.type, b.name, b.input) for b in final.content] == [("tool_use", "now", {})]
    assert final.stop_reason == "tool_use"
    follow = claude.messages.create(model="banyan-tiny", max_tokens=2, tools=[NOW], messages=[
        *FORCED["messages"], {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "12:00"},
                                     {"type": "text", "text": "Thanks."}]}])
    assert follow.usage.input_tokens + follow.usage.cache_read_input_tokens > m.usage.input_tokens


def test_stop_sequences(claude):
    text = claude.messages.create(**{**HI, "max_tokens": 8}).content[0].text
    stop = text[2:4]
    m = claude.messages.create(**{**HI, "max_tokens": 8, "stop_sequences": [stop]})
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert text.startswith(m.content[0].text) and stop not in m.content[0].text


@pytest.mark.parametrize("kwargs, error", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, anthropic.BadRequestError),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, anthropic.BadRequestError),
    ({"thinking": {"type": "enabled", "budget_tokens": 99}}, anthropic.BadRequestError),
    ({"tool_choice": {"type": "sometimes"}}, anthropic.BadRequestError),
    ({"model": "claude-9"}, anthropic.NotFoundError),
])
def test_errors_have_anthropic_bodies(claude, kwargs, error):
    with pytest.raises(error) as info:
        claude.messages.create(**{**HI, **kwargs})
    assert info.value.body["type"] == "error" and info.value.body["error"]["message"]
    assert info.value.body["error"]["type"] == ("not_found_error" if error is anthropic.NotFoundError
                                                else "invalid_request_error")


def test_validation_and_auth_errors_are_anthropic_shaped(server):
    r = httpx.post(server.url + "/v1/messages", headers={"x-api-key": API_KEY},
                   json={"model": "banyan-tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(**HI)
