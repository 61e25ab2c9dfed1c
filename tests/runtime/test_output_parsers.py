"""The lenient completion parser and its streaming form: well-formed and malformed generations, and
the same result for every way of splitting a generation into deltas."""

from __future__ import annotations

import json
import random

import pytest

from banyan.runtime.encoding import (ContentDelta, ParsedCompletion, ReasoningDelta, StreamingParser, ToolCall,
                                     ToolCallArgsDelta, ToolCallEnd, ToolCallStart, parse_completion,
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

# (text, thinking, tools, expected): never raise; DSML that does not parse is dropped with the call it
# was part of, and a block still open at the end is dropped with its unfinished call
MALFORMED = {
    "truncated block header": ("Hi" + OPEN + "<｜DSML｜inv", False, True, ParsedCompletion("Hi", None, [], True)),
    "truncated inside a string value": ("Hi" + OPEN + '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="city" '
                                        'string="true">Par</｜DSML', False, True,
                                        ParsedCompletion("Hi", None, [], True)),
    "truncated after a parameter header": ("Hi" + OPEN + '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="n" '
                                           'string="false">', False, True, ParsedCompletion("Hi", None, [], True)),
    "missing >\\n after the block tag": ("Hi\n\n<｜DSML｜tool_calls>" + invoke("now") + CLOSE, False, True,
                                         ParsedCompletion("Hi", None, [])),
    "duplicate parameter": ("Hi" + OPEN + invoke("f", param("a", "1"), param("a", "2")) + CLOSE, False, True,
                            ParsedCompletion("Hi", None, [])),
    "bad string attribute": ("Hi" + OPEN + invoke("f", param("a", "1").replace('"true"', '"yes"')) + CLOSE,
                             False, True, ParsedCompletion("Hi", None, [])),
    "junk after the end tag": ("Hi" + OPEN + invoke("now") + CLOSE + "\nand more", False, True,
                               ParsedCompletion("Hi\nand more", None, [ToolCall("now", "{}")])),
    "second invoke broken": ("Hi" + OPEN + invoke("now") + '\n<｜DSML｜invoke name="x\n">', False, True,
                             ParsedCompletion("Hi", None, [ToolCall("now", "{}")], True)),
    "</think> missing": ("still thinking" + OPEN[:6], True, True,
                         ParsedCompletion("", "still thinking", [], True)),
    "unicode everywhere": ("推理😀</think>内容" + OPEN + '<｜DSML｜invoke name="工具">\n<｜DSML｜parameter name="键"',
                           True, True, ParsedCompletion("内容", "推理😀", [], True)),
    "stray tag in content": ('Hi <｜DSML｜invoke name="f">x', False, True, ParsedCompletion("Hi ", None, [], True)),
    "stray tag up to a block end": ("Hi<｜DSML｜parameter>x" + CLOSE + " bye", False, True,
                                    ParsedCompletion("Hi bye", None, [])),
    "stray tag in reasoning": ("hmm </｜DSML｜invoke> ok", True, True, ParsedCompletion("", "hmm ", [], True)),
    "a lone < and newlines stay text": ("a < b\n\n", True, True, ParsedCompletion("", "a < b\n\n", [])),
    "empty text": ("", True, True, ParsedCompletion("", "", [])),
}


def run_stream(text: str, thinking: bool, tools: bool, cuts: list[int], whole_calls: bool = False,
               ) -> tuple[list, list, bool]:
    """(events from feed calls, events from finish, ended_in_tool_calls) for `text` split at `cuts`."""
    parser = StreamingParser(thinking, tools, whole_calls)
    fed, start = [], 0
    for end in [*cuts, len(text)]:
        fed += parser.feed(text[start:end])
        start = end
    return fed, parser.finish(), parser.ended_in_tool_calls


def assemble(events: list, thinking: bool, ended_in_tool_calls: bool = False) -> ParsedCompletion:
    """The completion the events spell, built independently of `collect`: a call counts once ended."""
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    starts = [e.index for e in events if isinstance(e, ToolCallStart)]
    assert starts == sorted(set(starts))
    calls = {i: ToolCall(e.name, "") for e in events if isinstance(e, ToolCallStart) for i in [e.index]}
    for e in events:
        if isinstance(e, ToolCallArgsDelta):
            calls[e.index].arguments += e.text
    ended = [e.index for e in events if isinstance(e, ToolCallEnd)]
    return ParsedCompletion(content, reasoning if thinking else None, [calls[i] for i in ended], ended_in_tool_calls)


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
def test_malformed_dsml_is_dropped(name):
    text, thinking, tools, expected = MALFORMED[name]
    assert parse_completion(text, thinking, tools) == expected


# A forced call as the grammar writes it: the text of every prefix is what `max_tokens` may leave.
FORCED = ("Checking." + OPEN + invoke("get_weather", param("city", "Paris"), param("days", "3", False)) + "\n"
          + invoke("now") + CLOSE)
CALL_ENDS = [FORCED.index("</｜DSML｜invoke>") + len("</｜DSML｜invoke>"),
             FORCED.rindex("</｜DSML｜invoke>") + len("</｜DSML｜invoke>")]
MARKER_START = len("Checking.\n\n<")  # from here the held-back text is a marker fragment


@pytest.mark.parametrize("whole_calls", [False, True])
def test_every_cut_of_a_forced_call_reports_only_complete_calls(whole_calls):
    for end in range(len(FORCED) + 1):
        cut = FORCED[:end]
        result = parse_completion(cut, False, True)
        for text in (result.content, *(c.arguments for c in result.tool_calls)):
            assert "｜" not in text and "<｜" not in text, (end, result)
        assert result.content == ("Checking." if end >= MARKER_START else cut), end
        complete = sum(end >= e for e in CALL_ENDS)
        assert [c.name for c in result.tool_calls] == ["get_weather", "now"][:complete], end
        if result.tool_calls:
            assert json.loads(result.tool_calls[0].arguments) == {"city": "Paris", "days": 3}
        assert result.ended_in_tool_calls == (MARKER_START <= end < len(FORCED)), end
        fed, finished, ended = run_stream(cut, False, True, list(range(1, end)), whole_calls)
        assert assemble(fed + finished, False, ended) == result, end
        if whole_calls:  # nothing of a call is sent before its invoke closes
            starts = [e for e in fed + finished if isinstance(e, ToolCallStart)]
            assert [e.name for e in starts] == [c.name for c in result.tool_calls], end


def test_random_text_never_raises():
    pieces = ["</think>", OPEN, CLOSE, "\n", '<｜DSML｜invoke name="', '">', '<｜DSML｜parameter name="k" string="',
              'true">', 'false">', "</｜DSML｜parameter>", "</｜DSML｜invoke>", "x", '"', "<", "中"]
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        for thinking in (False, True):
            whole = parse_completion(text, thinking, True)
            for whole_calls in (False, True):
                fed, finished, ended = run_stream(text, thinking, True, [rng.randint(0, len(text))], whole_calls)
                assert assemble(fed + finished, thinking, ended) == whole


@pytest.mark.parametrize("name", ALL_CASES)
def test_streaming_matches_whole_parse_for_every_split(name):
    text, thinking, tools, _ = ALL_CASES[name]
    whole = parse_completion(text, thinking, tools)
    for cuts in splits(text, seed=len(text)):
        for whole_calls in (False, True):
            fed, finished, ended = run_stream(text, thinking, tools, cuts, whole_calls)
            assert assemble(fed + finished, thinking, ended) == whole, cuts


@pytest.mark.parametrize("name", WELL_FORMED)
def test_no_marker_fragment_in_text_deltas(name):
    text, thinking, tools, _ = WELL_FORMED[name]
    for cuts in splits(text, seed=1):
        fed, finished, _ = run_stream(text, thinking, tools, cuts)
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


def test_whole_calls_number_complete_calls_only():
    text = "Hi" + OPEN + invoke("f", param("a", "1"), param("a", "2")) + CLOSE + OPEN + invoke("now") + CLOSE
    assert parse_completion(text, False, True) == ParsedCompletion("Hi", None, [ToolCall("now", "{}")])
    parser = StreamingParser(False, True, whole_calls=True)
    events = parser.feed(text) + parser.finish()
    assert events == [ContentDelta("Hi"), ToolCallStart(0, "now"), ToolCallArgsDelta(0, "{}"), ToolCallEnd(0)]
