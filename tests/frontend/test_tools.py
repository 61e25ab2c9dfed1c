"""Tools: schemas from signatures, argument validation, and the tool loop on a scripted backend."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Optional

import pytest

import banyan.frontend as sgl
from banyan.frontend.tools import as_tool, function_schema, validate
from banyan.runtime.encoding import encode_messages
from banyan.runtime.encoding.dsml import render_tool_calls
from banyan.runtime.encoding.tokens import THINK_CLOSE

CALLS: list[dict] = []


def get_weather(city: Literal["paris", "rome"], celsius: bool,
                days: Annotated[int, "forecast days", {"minimum": 1, "maximum": 3}] = 1) -> dict:
    """Weather forecast for a city.

    Details the model does not need."""
    CALLS.append({"city": city, "celsius": celsius, "days": days})
    return {"city": city, "temp": 21 if celsius else 70}


def test_schema_from_signature():
    assert function_schema(get_weather) == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "enum": ["paris", "rome"]}, "celsius": {"type": "boolean"},
            "days": {"type": "integer", "description": "forecast days", "minimum": 1, "maximum": 3}},
            "required": ["city", "celsius"]}}}

    def typed(xs: list[float], tags: Optional[list[str]] = None, meta: dict | None = None, any_value=None): ...

    props = function_schema(typed)["function"]["parameters"]["properties"]
    assert props == {"xs": {"type": "array", "items": {"type": "number"}},
                     "tags": {"type": "array", "items": {"type": "string"}}, "meta": {"type": "object"},
                     "any_value": {}}
    with pytest.raises(TypeError, match="named parameters"):
        function_schema(lambda *args: None)


def test_validation_messages():
    schema = function_schema(get_weather)["function"]["parameters"]
    assert validate({"city": "rome", "celsius": False, "days": 3}, schema, "arguments") == []
    errors = validate({"city": "oslo", "celsius": 1, "days": 9, "extra": 1}, schema, "arguments")
    assert errors == ['arguments.city must be one of ["paris", "rome"], got "oslo"',
                      "arguments.celsius must be boolean, got 1", "arguments.days is 9, outside maximum 3"]
    assert validate({}, schema, "arguments") == ["arguments.city is required", "arguments.celsius is required"]
    strict = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 2, "pattern": "^a"}},
              "additionalProperties": False}
    assert validate({"s": "bcd", "x": 1}, strict, "a") == ["a.s has a length outside [0, 2]",
                                                            "a.s does not match '^a'", "a.x is not a known parameter"]


def test_calls_turn_every_problem_into_result_text():
    tool = as_tool(get_weather)
    assert json.loads(tool.call('{"city": "paris", "celsius": true}')) == {"city": "paris", "temp": 21}
    assert tool.call("{not json").startswith("Error: the arguments of get_weather are not valid JSON")
    assert tool.call('{"city": "oslo", "celsius": true}') == \
        'Error: invalid arguments for get_weather: arguments.city must be one of ["paris", "rome"], got "oslo"'

    def fails(x: int) -> str:
        raise RuntimeError("backend down")

    assert as_tool(fails).call('{"x": 1}') == "Error: RuntimeError: backend down"
    with pytest.raises(ValueError, match="OpenAI form"):
        as_tool({"name": "no_function_key"})


def _call_text(name: str, arguments: dict) -> str:
    return render_tool_calls([(name, json.dumps(arguments))])


def test_tool_loop_runs_the_function_and_feeds_back_results(fake):
    CALLS.clear()
    replies = iter([_call_text("get_weather", {"city": "rome", "celsius": True, "days": 2}),
                    _call_text("get_weather", {"city": "oslo", "celsius": True}), "It is 21 degrees."])
    fake.reply = lambda prompt, params: next(replies)

    @sgl.function
    def agent(s):
        s += sgl.system("Use tools.")
        s += sgl.user("Weather in Rome?")
        s += sgl.assistant(sgl.gen("answer", tools=[get_weather]))

    state = agent.run()
    assert CALLS == [{"city": "rome", "celsius": True, "days": 2}]  # the invalid second call never ran
    assert state["answer"] == "It is 21 degrees."
    text = state.text()
    assert '<tool_result>{"city": "rome", "temp": 21}</tool_result>' in text
    assert '<tool_result>Error: invalid arguments for get_weather: arguments.city must be one of' in text
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    tools = [function_schema(get_weather)]
    rendered = [{**messages[0], "tools": tools}] + messages[1:]
    assert text == encode_messages(rendered)  # tools in the system message, results in user turns
    assert fake.prompts[1] == encode_messages(rendered[:4])  # each round continues the whole conversation
    rounds = state.get_meta_info("answer")["tool_rounds"]
    assert [r[0]["arguments"] for r in rounds] == ['{"city": "rome", "celsius": true, "days": 2}',
                                                   '{"city": "oslo", "celsius": true}']


def test_forced_call_round_limit_and_thinking(fake):
    CALLS.clear()
    seen = []

    def reply(prompt, params):
        seen.append(params)
        if params.stop == (THINK_CLOSE,):
            return "plan", {"type": "stop", "matched": THINK_CLOSE}
        return _call_text("get_weather", {"city": "paris", "celsius": False})

    fake.reply = reply

    @sgl.function
    def agent(s):
        s += sgl.user("Weather?")
        s += sgl.assistant(sgl.gen("answer", thinking=True, tools=[get_weather], tool_choice="get_weather",
                                   max_tool_rounds=1))

    state = agent.run()
    assert CALLS == [{"city": "paris", "celsius": False, "days": 1}]
    answer_params = [p for p in seen if p.stop != (THINK_CLOSE,)]
    forced = answer_params[0].structural_tag  # the first round is forced by the DSML structural tag
    assert forced and "get_weather" in forced
    assert answer_params[1].structural_tag is None  # later rounds are free
    meta = state.get_meta_info("answer")
    assert len(meta["tool_rounds"]) == 1 and meta["tool_calls"]  # the second round's call was not run
    assert state["answer_reasoning"] == "plan"
    last = state.messages()[-1]
    assert last["tool_calls"] == meta["tool_calls"] and last["reasoning_content"] == "plan"
    assert state.text() == encode_messages(
        [{"role": "system", "content": "", "tools": [function_schema(get_weather)]}] + state.messages(), "thinking")


def test_tools_without_implementation_are_handed_back(fake):
    lookup = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
    fake.reply = lambda prompt, params: "Let me check." + _call_text("lookup", {"q": "x"})

    @sgl.function
    def agent(s):
        s += sgl.user("Find x")
        s += sgl.assistant(sgl.gen("answer", tools=[lookup, get_weather]))

    state = agent.run()
    assert len(fake.prompts) == 1
    assert state["answer"] == "Let me check."
    (call,) = state.get_meta_info("answer")["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("lookup", {"q": "x"})


def test_unknown_tool_names_are_reported_to_the_model(fake):
    replies = iter([_call_text("teleport", {}), "done"])
    fake.reply = lambda prompt, params: next(replies)

    @sgl.function
    def agent(s):
        s += sgl.user("Go")
        s += sgl.assistant(sgl.gen("answer", tools=[get_weather]))

    state = agent.run()
    assert state.messages()[2]["content"] == "Error: unknown tool 'teleport'; available tools: get_weather"
