"""Reasoning-mode resolution and tool handling of chat requests (no server needed)."""

from __future__ import annotations

import pytest

from banyan.runtime.server.chat_prompt import build_chat_prompt, reasoning_mode
from banyan.runtime.server.errors import APIError
from banyan.runtime.server.models import ChatCompletionRequest

MSGS = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}


def req(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=MSGS, **kw)


@pytest.mark.parametrize("kwargs, default, expected", [
    ({}, False, (False, None)),
    ({}, True, (True, None)),
    ({"chat_template_kwargs": {"thinking": True}}, False, (True, None)),
    ({"chat_template_kwargs": {"enable_thinking": False}}, True, (False, None)),
    ({"thinking": {"type": "enabled"}}, False, (True, None)),
    ({"reasoning_effort": "max"}, False, (True, "max")),
    ({"reasoning_effort": "low"}, False, (True, "high")),
    ({"reasoning_effort": "none"}, True, (False, None)),
    ({"chat_template_kwargs": {"thinking": False}, "reasoning_effort": "max"}, False, (False, None)),
    ({"chat_template_kwargs": {"reasoning_effort": "max"}}, False, (True, "max")),
])
def test_reasoning_mode(kwargs, default, expected):
    assert reasoning_mode(req(**kwargs), default) == expected


@pytest.mark.parametrize("kwargs", [{"reasoning_effort": "extreme"}, {"thinking": {"type": "maybe"}},
                                    {"chat_template_kwargs": {"thinking": "yes"}}])
def test_bad_reasoning_settings_are_400(kwargs):
    with pytest.raises(APIError) as info:
        reasoning_mode(req(**kwargs), False)
    assert info.value.status == 400


def test_prompts_for_modes_tools_and_tool_choice():
    assert build_chat_prompt(req(), False).text.endswith("<｜User｜>hi<｜Assistant｜></think>")
    thinking = build_chat_prompt(req(reasoning_effort="high"), False)
    assert thinking.text.endswith("<｜Assistant｜><think>") and thinking.thinking and thinking.grammar is None
    top = build_chat_prompt(req(reasoning_effort="max"), False).text
    assert top.startswith("<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum")
    with_tools = build_chat_prompt(req(tools=[TOOL]), False)
    assert with_tools.parse_tools and "## Tools" in with_tools.text and '"name": "f"' in with_tools.text
    none = build_chat_prompt(req(tools=[TOOL], tool_choice="none"), False)
    assert not none.parse_tools and "## Tools" not in none.text
    forced = build_chat_prompt(req(tools=[TOOL], tool_choice="required", reasoning_effort="high"), False)
    assert forced.grammar.kind == "structural_tag" and forced.grammar.start_after == 128822
    fmt = build_chat_prompt(req(response_format={"type": "json_object"}), False)
    assert fmt.grammar.kind == "json_object" and fmt.grammar.start_after is None
    with pytest.raises(APIError):
        build_chat_prompt(req(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "g"}}), False)
    with pytest.raises(APIError):
        build_chat_prompt(ChatCompletionRequest(messages=[{"role": "wizard", "content": "x"}]), False)
