"""The V4 chat encoder against DeepSeek's golden outputs and hand-written cases (docs/dsv4-spec.md §7),
and the strict completion parser. Expected strings are written out from the format's rules."""

from __future__ import annotations

import json

import pytest

from banyan.runtime.encoding import EncodingError, encode_messages, parse_message_from_completion_text
from banyan.tests.conftest import shared_dir

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

# docs/dsv4-spec.md §7.4, case 2
CASE_2_IDS = [0, 3476, 477, 260, 11502, 22896, 16, 128803, 19923, 128804, 128822, 23166, 1031, 3, 1730, 588, 342,
              1694, 440, 33, 1, 128803, 3085, 344, 270, 6102, 294, 8760, 33, 128804, 128821, 671, 3967, 20407, 943,
              270, 6102, 294, 8760, 16, 983, 344, 11111, 16, 128822, 671, 6102, 294, 8760, 344, 11111, 16, 1]

TOOLS_TEXT = """## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

{schemas}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""

THINK_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, "
    "rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "天气 lookup",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_LINE = ('{"name": "get_weather", "description": "天气 lookup", "parameters": {"type": "object", '
                '"properties": {"city": {"type": "string"}}, "required": ["city"]}}')
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {}}}
CLOCK_LINE = '{"name": "now", "parameters": {}}'


def tools_text(*lines: str) -> str:
    return TOOLS_TEXT.replace("{schemas}", "\n".join(lines))


def call(name: str, arguments, call_id: str = "") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def invoke(name: str, *params: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n' + "\n".join(params) + "\n</｜DSML｜invoke>"


def param(key: str, value: str, string: bool) -> str:
    return f'<｜DSML｜parameter name="{key}" string="{"true" if string else "false"}">{value}</｜DSML｜parameter>'


def block(*invokes: str) -> str:
    return "\n\n<｜DSML｜tool_calls>\n" + "\n".join(invokes) + "\n</｜DSML｜tool_calls>"


# --- golden fixtures and the spec's worked examples --------------------------------------------------

def fixture_case(n: int) -> tuple[list[dict], str]:
    folder = shared_dir() / "fixtures" / "encoding"
    messages = json.loads((folder / f"test_input_{n}.json").read_text(encoding="utf-8"))
    return messages, (folder / f"test_output_{n}.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("case, mode", [(2, "thinking"), (4, "chat")])
def test_golden_fixture_byte_exact(case, mode):
    messages, expected = fixture_case(case)
    assert encode_messages(messages, thinking_mode=mode) == expected


def test_golden_case_2_token_ids():
    from banyan.runtime.tokenizer import load_tokenizer

    messages, _ = fixture_case(2)
    text = encode_messages(messages, thinking_mode="thinking")
    assert load_tokenizer().encode(text, add_special_tokens=False) == CASE_2_IDS


@pytest.mark.parametrize("messages, mode, expected", [
    ([{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}], "thinking",
     f"{BOS}SYS<｜User｜>hi<｜Assistant｜><think>"),
    ([{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}], "chat",
     f"{BOS}SYS<｜User｜>hi<｜Assistant｜></think>"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "reasoning_content": "r", "content": "yo"},
      {"role": "user", "content": "again"}], "thinking",
     f"{BOS}<｜User｜>hi<｜Assistant｜></think>yo{EOS}<｜User｜>again<｜Assistant｜><think>"),
])
def test_spec_worked_examples(messages, mode, expected):
    assert encode_messages(messages, thinking_mode=mode) == expected


# --- hand-written cases ------------------------------------------------------------------------------

def test_system_tools_one_schema_per_line():
    messages = [{"role": "system", "content": "SYS", "tools": [WEATHER, CLOCK]}, {"role": "user", "content": "q"}]
    expected = f"{BOS}SYS\n\n" + tools_text(WEATHER_LINE, CLOCK_LINE) + "<｜User｜>q<｜Assistant｜></think>"
    assert encode_messages(messages, thinking_mode="chat") == expected


def test_response_format_after_tools():
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    messages = [{"role": "system", "content": "S", "tools": [CLOCK], "response_format": schema},
                {"role": "user", "content": "q"}]
    expected = (f"{BOS}S\n\n" + tools_text(CLOCK_LINE) + "\n\n## Response Format:\n\nYou MUST strictly adhere to "
                "the following schema to reply:\n" + json.dumps(schema) + "<｜User｜>q<｜Assistant｜></think>")
    assert encode_messages(messages, thinking_mode="chat") == expected


def test_thinking_tools_multi_turn_with_results_in_call_order():
    messages = [
        {"role": "system", "content": "You are helpful.", "tools": [WEATHER]},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "reasoning_content": "Two cities.", "content": "", "tool_calls": [
            call("get_weather", '{"city": "Paris"}', "c1"), call("get_weather", '{"city": "Rome", "days": 2}', "c2")]},
        {"role": "tool", "tool_call_id": "c2", "content": "Rome: 20C"},
        {"role": "tool", "tool_call_id": "c1", "content": "Paris: 15C"},
        {"role": "assistant", "reasoning_content": "Both known.", "content": "Paris 15C, Rome 20C."},
        {"role": "user", "content": "Thanks"},
    ]
    calls = block(invoke("get_weather", param("city", "Paris", True)),
                  invoke("get_weather", param("city", "Rome", True), param("days", "2", False)))
    # tools switch drop_thinking off: every turn keeps <think> and its reasoning
    expected = (f"{BOS}You are helpful.\n\n" + tools_text(WEATHER_LINE)
                + "<｜User｜>Weather in Paris and Rome?<｜Assistant｜><think>"
                + "Two cities.</think>" + calls + EOS
                + "<｜User｜><tool_result>Paris: 15C</tool_result>\n\n<tool_result>Rome: 20C</tool_result>"
                + "<｜Assistant｜><think>Both known.</think>Paris 15C, Rome 20C." + EOS
                + "<｜User｜>Thanks<｜Assistant｜><think>")
    assert encode_messages(messages, thinking_mode="thinking") == expected


def test_user_text_after_tool_result_joins_the_same_turn():
    messages = [{"role": "user", "content": "go"},
                {"role": "assistant", "content": "", "tool_calls": [call("now", "{}", "t")]},
                {"role": "tool", "tool_call_id": "t", "content": "noon"},
                {"role": "user", "content": "and?"}]
    expected = (f"{BOS}<｜User｜>go<｜Assistant｜></think>" + block(invoke("now")) + EOS
                + "<｜User｜><tool_result>noon</tool_result>\n\nand?<｜Assistant｜></think>")
    assert encode_messages(messages, thinking_mode="chat") == expected


def test_consecutive_user_messages_merge_unless_the_first_has_a_task():
    plain = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert encode_messages(plain) == f"{BOS}<｜User｜>a\n\nb<｜Assistant｜></think>"
    tasked = [{"role": "user", "content": "a", "task": "query"}, {"role": "user", "content": "b"}]
    assert encode_messages(tasked) == f"{BOS}<｜User｜>a<｜User｜>b<｜Assistant｜></think>"
    # as in the reference, a task on a message that joins the previous one is lost
    joined = [{"role": "user", "content": "a"}, {"role": "user", "content": "b", "task": "title"}]
    assert encode_messages(joined) == encode_messages(plain)


def test_dict_and_string_arguments_render_identically():
    args = {"city": "Zürich", "days": 3, "units": ["c"], "exact": True, "opt": None}

    def render(arguments):
        return encode_messages([{"role": "user", "content": "q"},
                                {"role": "assistant", "content": "", "tool_calls": [call("f", arguments)]}])

    as_dict, as_text = render(args), render(json.dumps(args))
    assert as_dict == as_text
    assert block(invoke("f", param("city", "Zürich", True), param("days", "3", False), param("units", '["c"]', False),
                        param("exact", "true", False), param("opt", "null", False))) + EOS in as_dict


def test_arguments_that_are_not_json_are_wrapped_like_the_reference():
    text = encode_messages([{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "", "tool_calls": [call("f", "oops")]}])
    assert block(invoke("f", param("arguments", "oops", True))) in text


def test_developer_and_latest_reminder():
    messages = [{"role": "system", "content": "S"}, {"role": "developer", "content": "old instructions"},
                {"role": "user", "content": "u1"}, {"role": "assistant", "reasoning_content": "r1", "content": "a1"},
                {"role": "latest_reminder", "content": "LR"}, {"role": "user", "content": "u2"}]
    # developer messages before the last user turn are dropped together with old reasoning
    expected = (f"{BOS}S<｜User｜>u1<｜Assistant｜></think>a1{EOS}<｜latest_reminder｜>LR"
                f"<｜User｜>u2<｜Assistant｜><think>")
    assert encode_messages(messages, thinking_mode="thinking") == expected


def test_developer_with_response_format_and_reminder_after_user():
    messages = [{"role": "developer", "content": "find X", "response_format": {"type": "json_object"}},
                {"role": "latest_reminder", "content": "today"}]
    expected = (f"{BOS}<｜User｜>find X\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema "
                '''to reply:\n{"type": "json_object"}<｜Assistant｜><think><｜latest_reminder｜>today''')
    assert encode_messages(messages, thinking_mode="thinking") == expected


def test_think_max_prefix():
    messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}]
    plain = encode_messages(messages, thinking_mode="thinking")
    assert encode_messages(messages, thinking_mode="thinking", reasoning_effort="max") == (
        f"{BOS}{THINK_MAX}SYS<｜User｜>hi<｜Assistant｜><think>")
    assert encode_messages(messages, thinking_mode="thinking", reasoning_effort="high") == plain
    assert encode_messages(messages, thinking_mode="chat", reasoning_effort="max") == (
        encode_messages(messages, thinking_mode="chat"))


@pytest.mark.parametrize("mode", ["chat", "thinking"])
def test_non_action_task_token_and_no_reasoning_after_it(mode):
    messages = [{"role": "user", "content": "hello", "task": "title"}]
    assert encode_messages(messages, thinking_mode=mode) == f"{BOS}<｜User｜>hello<｜title｜>"
    messages.append({"role": "assistant", "reasoning_content": "hidden", "content": "Greeting"})
    assert encode_messages(messages, thinking_mode=mode) == f"{BOS}<｜User｜>hello<｜title｜>Greeting{EOS}"


def test_action_task_in_thinking_mode():
    messages = [{"role": "user", "content": "q", "task": "action"}]
    assert encode_messages(messages, thinking_mode="thinking") == f"{BOS}<｜User｜>q<｜Assistant｜><think><｜action｜>"


def test_wo_eos():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "partial", "wo_eos": True}]
    assert encode_messages(messages) == f"{BOS}<｜User｜>q<｜Assistant｜></think>partial"


def test_drop_thinking_false_keeps_old_reasoning():
    messages, _ = fixture_case(2)
    expected = (f"{BOS}You are a helpful assistant.<｜User｜>Hello<｜Assistant｜><think>"
                f"The user said hello, I should greet back.</think>Hi there! How can I help you?{EOS}"
                "<｜User｜>What is the capital of France?<｜Assistant｜><think>"
                f"The user asks about the capital of France. It is Paris.</think>The capital of France is Paris.{EOS}")
    assert encode_messages(messages, thinking_mode="thinking", drop_thinking=False) == expected


def test_context_continues_without_bos():
    history = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}]
    new = [{"role": "user", "content": "u2"}]
    assert encode_messages(history) + encode_messages(new, context=history) == encode_messages(history + new)
    assert encode_messages(history, add_default_bos_token=False) == encode_messages(history)[len(BOS):]


def test_openai_extensions():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    base = [{"role": "system", "content": None}, {"role": "user", "content": parts},
            {"role": "assistant", "reasoning": "r", "content": None}]
    assert encode_messages(base, thinking_mode="thinking") == f"{BOS}<｜User｜>ab<｜Assistant｜><think>r</think>{EOS}"
    # tool results keep the reference's blank line between text parts
    tool = [{"role": "tool", "tool_call_id": "x", "content": parts}]
    assert encode_messages(tool) == f"{BOS}<｜User｜><tool_result>a\n\nb</tool_result><｜Assistant｜></think>"


@pytest.mark.parametrize("kwargs, match", [
    (dict(messages=[{"role": "robot", "content": "x"}]), "unknown message role 'robot'"),
    (dict(messages=[{"role": "user", "content": "x"}], thinking_mode="deep"), "invalid thinking_mode 'deep'"),
    (dict(messages=[{"role": "user", "content": "x"}], reasoning_effort="low"), "invalid reasoning_effort 'low'"),
    (dict(messages=[{"role": "user", "content": "x", "task": "dance"}]), "invalid task 'dance'"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]),
     "non-text content part \\('image_url'\\)"),
    (dict(messages=[{"role": "developer", "content": ""}]), "developer message 0 has empty content"),
    (dict(messages=[{"role": "system", "content": "s", "tools": [{"name": "f"}]}]), "'function' object"),
    (dict(messages=[{"role": "assistant", "content": "", "tool_calls": [call("f", "[1, 2]")]}]), "JSON object"),
])
def test_invalid_input_raises_encoding_error(kwargs, match):
    with pytest.raises(EncodingError, match=match):
        encode_messages(**kwargs)
    assert issubclass(EncodingError, ValueError)


# --- round trip through the strict parser ------------------------------------------------------------

ASSISTANT_TURNS = [
    {"content": "Just text.", "reasoning_content": "Simple."},
    {"content": "", "reasoning_content": "Need a tool.",
     "tool_calls": [call("get_weather", {"city": "Paris \"centre\"\n", "days": 2, "hourly": False})]},
    {"content": "Checking both.", "reasoning_content": "",
     "tool_calls": [call("get_weather", {"city": "東京"}), call("now", {}), call("f", {"xs": [1, {"a": None}]})]},
]


def completion_text(turn: dict, mode: str) -> str:
    """What the model writes after the generation prompt for this assistant turn."""
    user = {"role": "user", "content": "q"}
    prompt = encode_messages([user], thinking_mode=mode)
    full = encode_messages([user, {"role": "assistant", **turn}], thinking_mode=mode)
    assert full.startswith(prompt)
    return full[len(prompt):]


@pytest.mark.parametrize("mode", ["chat", "thinking"])
@pytest.mark.parametrize("turn", ASSISTANT_TURNS)
def test_round_trip_through_strict_parser(turn, mode):
    parsed = parse_message_from_completion_text(completion_text(turn, mode), thinking_mode=mode)
    assert parsed["role"] == "assistant"
    assert parsed["content"] == turn["content"]
    assert parsed["reasoning_content"] == (turn["reasoning_content"] if mode == "thinking" else "")
    expected_calls = [{"type": "function", "function": {
        "name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
        for c in turn.get("tool_calls", [])]
    assert parsed["tool_calls"] == expected_calls


@pytest.mark.parametrize("text, mode, match", [
    ("hi" + EOS, "deep", "invalid thinking_mode 'deep'"),
    ("no end think" + EOS, "thinking", "missing </think>"),
    ("</think>no eos", "thinking", "missing EOS"),
    ("hi" + EOS + "more", "chat", "unexpected text at the end"),
    ("a<think>b" + EOS, "chat", "unexpected special token"),
    ("x" + block(invoke("f")) + "junk" + EOS, "chat", "unexpected text after tool calls"),
    ("x" + block(invoke("f", param("a", "1", True), param("a", "2", True))) + EOS, "chat", "duplicate parameter"),
    ("x" + block(invoke("f", param("a", "1", True)).replace('string="true"', 'string="yes"')) + EOS, "chat",
     "parameter format error"),
    ("x\n\n<｜DSML｜tool_calls><｜DSML｜invoke" + EOS, "chat", "expected '>\\\\n'"),
])
def test_strict_parser_rejects_malformed_text(text, mode, match):
    with pytest.raises(EncodingError, match=match):
        parse_message_from_completion_text(text, thinking_mode=mode)
