"""The lenient completion parser and its streaming form: well-formed and malformed generations, and
the same result for every way of splitting a generation into deltas."""

from __future__ import annotations

import json
import random

import pytest

from banyan.runtime.encoding import (ContentDelta, ParsedCompletion, ReasoningDelta, StreamingParser, ToolCall,
                                     ToolCallArgsDelta, ToolCallStart, parse_completion,
                                     parse_message_from_completion_text)

EOS = "<｜end▁of▁sentence｜>"
OPEN = "\n\n<｜DSML｜tool_calls>\n"
CLOSE = "\n</｜DSML｜tool_calls>"


def invoke(name: str, *params: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n' + "\n".join(params) + "\n</｜DSML｜invoke>"


def param(key: str, value: str, string: bool = True) -> str:
    return f'<｜DSML｜parameter name="{key}" string="{"true" if string else "false"}">{value}</｜DSML｜parameter>'


WEATHER = invoke("get_weather", param("city", "Paris"), param("days", "3", False))

# (text, thinking, tools, expected)
WELL_FORMED = {
    "reasoning and content": ("Let me think.</think>The answer is 4.", True, False,
                              ParsedCompletion("The answer is 4.", "Let me think.", [])),
    "content only": ("Hello there, friend.", False, True, ParsedCompletion("Hello there, friend.", None, [])),
    "string and non-string params": ("Need weather.</think>" + OPEN + WEATHER + CLOSE, True, True,
                                     ParsedCompletion("", "Need weather.", [
                                         ToolCall("get_weather", '{"city": "Paris", "days": 3}')])),
    "multiple invokes and no-param invoke": (
        OPEN + "\n".join([WEATHER, invoke("now"), invoke("f", param("xs", '[1, {"a": null}]', False))]) + CLOSE,
        False, True, ParsedCompletion("", None, [ToolCall("get_weather", '{"city": "Paris", "days": 3}'),
                                                 ToolCall("now", "{}"), ToolCall("f", '{"xs": [1, {"a": null}]}')])),
    "content before tool calls": ("Checking the weather." + OPEN + WEATHER + CLOSE, False, True,
                                  ParsedCompletion("Checking the weather.", None, [
                                      ToolCall("get_weather", '{"city": "Paris", "days": 3}')])),
    "escaped and unicode values": ("思考。</think>好的。" + OPEN + invoke("echo", param("s", 'a "q" \\ 東京\n\t\x01 😀'))
                                   + CLOSE, True, True,
                                   ParsedCompletion("好的。", "思考。", [
                                       ToolCall("echo", json.dumps({"s": 'a "q" \\ 東京\n\t\x01 😀'},
                                                                   ensure_ascii=False))])),
    "tool calls before </think>": ("Call it now." + OPEN + invoke("now") + CLOSE, True, True,
                                   ParsedCompletion("", "Call it now.", [ToolCall("now", "{}")])),
    "DSML is plain content without tools": ("Look." + OPEN + invoke("now") + CLOSE, False, False,
                                            ParsedCompletion("Look." + OPEN + invoke("now") + CLOSE, None, [])),
    "value containing markup": (OPEN + invoke("w", param("html", "<b>x</b> </think> <｜DSML｜invoke")) + CLOSE,
                                False, True, ParsedCompletion("", None, [
                                    ToolCall("w", '{"html": "<b>x</b> </think> <｜DSML｜invoke"}')])),
}

TRUNCATED = "Checking." + OPEN + invoke("get_weather", param("city", "Paris")) + "\n" + invoke("now")

# (text, thinking, tools, expected): never raise, the unparsed rest is content
MALFORMED = {
    "truncated block header": ("Hi" + OPEN + "<｜DSML｜inv", False, True,
                               ParsedCompletion("Hi" + OPEN + "<｜DSML｜inv", None, [])),
    "truncated inside a string value": ("Hi" + OPEN + '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="city" '
                                        'string="true">Par</｜DSML', False, True,
                                        ParsedCompletion("Hi</｜DSML", None, [ToolCall("f", '{"city": "Par"}')])),
    "truncated after a parameter header": ("Hi" + OPEN + '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="n" '
                                           'string="false">', False, True,
                                           ParsedCompletion("Hi", None, [ToolCall("f", '{"n": }')])),
    "missing >\\n after the block tag": ("Hi\n\n<｜DSML｜tool_calls>" + invoke("now") + CLOSE, False, True,
                                         ParsedCompletion("Hi\n\n<｜DSML｜tool_calls>" + invoke("now") + CLOSE,
                                                          None, [])),
    "duplicate parameter": ("Hi" + OPEN + invoke("f", param("a", "1"), param("a", "2")) + CLOSE, False, True,
                            ParsedCompletion("Hi\n" + param("a", "2") + "\n</｜DSML｜invoke>" + CLOSE, None,
                                             [ToolCall("f", '{"a": "1"}')])),
    "bad string attribute": ("Hi" + OPEN + invoke("f", param("a", "1").replace('"true"', '"yes"')) + CLOSE,
                             False, True,
                             ParsedCompletion("Hi\n" + param("a", "1").replace('"true"', '"yes"')
                                              + "\n</｜DSML｜invoke>" + CLOSE, None, [ToolCall("f", "{}")])),
    "junk after the end tag": ("Hi" + OPEN + invoke("now") + CLOSE + "\nand more", False, True,
                               ParsedCompletion("Hi\nand more", None, [ToolCall("now", "{}")])),
    "second invoke broken": ("Hi" + OPEN + invoke("now") + '\n<｜DSML｜invoke name="x\n">', False, True,
                             ParsedCompletion('Hi\n<｜DSML｜invoke name="x\n">', None, [ToolCall("now", "{}")])),
    "</think> missing": ("still thinking" + OPEN[:6], True, True,
                         ParsedCompletion("", "still thinking" + OPEN[:6], [])),
    "unicode everywhere": ("推理😀</think>内容" + OPEN + '<｜DSML｜invoke name="工具">\n<｜DSML｜parameter name="键"',
                           True, True,
                           ParsedCompletion('内容\n<｜DSML｜parameter name="键"', "推理😀", [ToolCall("工具", "{}")])),
    "empty text": ("", True, True, ParsedCompletion("", "", [])),
}


def run_stream(text: str, thinking: bool, tools: bool, cuts: list[int]) -> tuple[list, list]:
    """(events from feed calls, events from finish) for `text` split at `cuts`."""
    parser = StreamingParser(thinking, tools)
    fed, start = [], 0
    for end in [*cuts, len(text)]:
        fed += parser.feed(text[start:end])
        start = end
    return fed, parser.finish()


def assemble(events: list, thinking: bool) -> ParsedCompletion:
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls = [ToolCall(e.name, "") for e in events if isinstance(e, ToolCallStart)]
    assert [e.index for e in events if isinstance(e, ToolCallStart)] == list(range(len(calls)))
    for e in events:
        if isinstance(e, ToolCallArgsDelta):
            calls[e.index].arguments += e.text
    return ParsedCompletion(content, reasoning if thinking else None, calls)


def splits(text: str, seed: int) -> list[list[int]]:
    """Single characters, every two-way split, and a few random multi-way splits."""
    rng = random.Random(seed)
    n = len(text)
    result = [list(range(1, n)), *([i] for i in range(n + 1))]
    result += [sorted(rng.sample(range(n + 1), min(n + 1, rng.randint(2, 8)))) for _ in range(5)]
    return result


ALL_CASES = {**WELL_FORMED, **MALFORMED, "truncated tool call": (TRUNCATED, False, True, None)}


@pytest.mark.parametrize("name", WELL_FORMED)
def test_well_formed(name):
    text, thinking, tools, expected = WELL_FORMED[name]
    assert parse_completion(text, thinking, tools) == expected


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_falls_back_to_content(name):
    text, thinking, tools, expected = MALFORMED[name]
    assert parse_completion(text, thinking, tools) == expected


def test_truncation_at_every_point_never_raises():
    for end in range(len(TRUNCATED) + 1):
        result = parse_completion(TRUNCATED[:end], False, True)
        assert result.content.startswith(TRUNCATED[:min(end, len("Checking."))])
        assert len(result.tool_calls) <= 2
        if result.tool_calls:
            assert result.tool_calls[0].name == "get_weather"
            json.loads(result.tool_calls[0].arguments)  # string values are closed, so it stays valid JSON


def test_random_text_never_raises():
    pieces = ["</think>", OPEN, CLOSE, "\n", '<｜DSML｜invoke name="', '">', '<｜DSML｜parameter name="k" string="',
              'true">', 'false">', "</｜DSML｜parameter>", "</｜DSML｜invoke>", "x", '"', "<", "中"]
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        for thinking in (False, True):
            whole = parse_completion(text, thinking, True)
            assert assemble(sum(run_stream(text, thinking, True, [rng.randint(0, len(text))]), []), thinking) == whole


@pytest.mark.parametrize("name", ALL_CASES)
def test_streaming_matches_whole_parse_for_every_split(name):
    text, thinking, tools, _ = ALL_CASES[name]
    whole = parse_completion(text, thinking, tools)
    for cuts in splits(text, seed=len(text)):
        fed, finished = run_stream(text, thinking, tools, cuts)
        assert assemble(fed + finished, thinking) == whole, cuts


@pytest.mark.parametrize("name", WELL_FORMED)
def test_no_marker_fragment_in_text_deltas(name):
    text, thinking, tools, _ = WELL_FORMED[name]
    for cuts in splits(text, seed=1):
        fed, finished = run_stream(text, thinking, tools, cuts)
        for event in fed + finished:
            if isinstance(event, (ContentDelta, ReasoningDelta)) and tools:
                assert "｜DSML｜" not in event.text and "</think>" not in event.text
            if isinstance(event, (ContentDelta, ReasoningDelta)) and thinking:
                assert "</think>" not in event.text
        for event in fed:
            if isinstance(event, (ContentDelta, ReasoningDelta)):
                reasoning = isinstance(event, ReasoningDelta)
                active = (("</think>",) if reasoning else ()) + (("\n\n<｜DSML｜tool_calls>",) if tools else ())
                assert not any(event.text.endswith(m[:k]) for m in active for k in range(1, len(m))), (cuts, event)


def test_partial_markers_are_held_back():
    parser = StreamingParser(thinking=True, tools=True)
    assert parser.feed("Thinking</thi") == [ReasoningDelta("Thinking")]
    assert parser.feed("nk>Hello\n\n<｜DSML｜tool_") == [ContentDelta("Hello")]
    assert parser.feed("calls>\n<｜DSML｜invoke name=\"f") == []
    assert parser.feed('">\n') == [ToolCallStart(0, "f")]


def test_arguments_stream_incrementally():
    text = OPEN + invoke("f", param("city", 'Pa"ris'), param("n", "12", False)) + CLOSE
    parser = StreamingParser(thinking=False, tools=True)
    args = ""
    seen = []
    for ch in text:
        for event in parser.feed(ch):
            if isinstance(event, ToolCallArgsDelta):
                args += event.text
                seen.append(args)
    assert parser.finish() == []
    assert seen[:7] == ['{"city": "', '{"city": "P', '{"city": "Pa', '{"city": "Pa\\"', '{"city": "Pa\\"r',
                        '{"city": "Pa\\"ri', '{"city": "Pa\\"ris']
    assert '{"city": "Pa\\"ris", "n": ' in seen and '{"city": "Pa\\"ris", "n": 1' in seen
    assert args == '{"city": "Pa\\"ris", "n": 12}'


def test_lenient_agrees_with_strict_on_well_formed_text():
    for text, thinking, tools, expected in WELL_FORMED.values():
        if not tools or (thinking and "</think>" not in text):
            continue
        strict = parse_message_from_completion_text(text + EOS, "thinking" if thinking else "chat")
        assert strict["content"] == expected.content
        assert strict["reasoning_content"] == (expected.reasoning_content or "")
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in strict["tool_calls"]] == [
            (c.name, c.arguments) for c in expected.tool_calls]
