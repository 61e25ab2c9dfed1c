"""A forced tool call cut by the token limit at every token, through each API's output layer
(chat, Responses, Messages), whole and streamed token by token: only complete calls are reported,
the finish says the turn was cut, and no DSML reaches any text. No server: the engine outputs are
built from the real tokenizer's tokens of the DSML the grammar forces."""

from __future__ import annotations

import json

import pytest

from banyan.runtime.encoding.dsml import render_tool_calls
from banyan.runtime.server import messages, responses
from banyan.runtime.server.chat import _delta, _message
from banyan.runtime.server.chat_prompt import ChatPrompt
from banyan.runtime.server.runner import Call
from banyan.runtime.server.turn import ChoiceParser
from banyan.runtime.tokenizer import load_tokenizer

CALLS = [("get_weather", '{"city": "Paris", "days": 3}'), ("now", "{}")]
TEXT = "Checking." + render_tool_calls(CALLS)
PROMPT = ChatPrompt(text="", thinking=False, parse_tools=True, grammar=None)
CALL = Call(input_ids=[0, 5, 6], sampling_params={})


@pytest.fixture(scope="module")
def tokens():
    tok = load_tokenizer()
    ids = tok.encode(TEXT, add_special_tokens=False)
    texts = [tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    assert texts[-1] == TEXT
    return ids, texts


def call_ends(texts: list[str]) -> list[int]:
    """For each call, the first cut (token count) at which its invoke is closed."""
    ends, start = [], 0
    for _ in CALLS:
        start = TEXT.index("</｜DSML｜invoke>", start) + len("</｜DSML｜invoke>")
        ends.append(next(k for k, t in enumerate(texts) if len(t) >= start))
    return ends


def output(ids: list[int], text: str, final: bool, kind: str = "length") -> dict:
    reason = ({"type": kind} if kind == "length" else {"type": "stop", "matched": 1}) if final else None
    return {"text": text, "output_ids": ids, "meta_info": {"finish_reason": reason, "prompt_tokens": 3,
                                                          "completion_tokens": len(ids), "cached_tokens": 0}}


def stream_updates(ids: list[int], texts: list[str], k: int, kind: str) -> list:
    parser = ChoiceParser(PROMPT, CALL)
    return [parser.update(output(ids[j:j + 1], texts[j + 1][len(texts[j]):], j == k - 1, kind)) for j in range(k)]


def no_dsml(*texts: str | None) -> bool:
    return all("｜" not in (t or "") and "DSML" not in (t or "") for t in texts)


def expected(k: int, ends: list[int], block_closed: bool, kind: str) -> tuple[list[str], str]:
    names = [name for (name, _), end in zip(CALLS, ends) if k >= end]
    return names, ("tool_calls" if names and (block_closed or kind != "length") else "length")


@pytest.mark.parametrize("kind", ["length", "stop"])
def test_every_cut_reports_only_complete_calls_on_every_api(tokens, kind):
    ids, texts = tokens
    ends = call_ends(texts)
    for k in range(1, len(ids) + 1):
        if kind == "stop" and k < len(ids):
            continue  # EOS only comes after the block (the grammar forces it)
        names, reason = expected(k, ends, k == len(ids), kind)
        choice = ChoiceParser(PROMPT, CALL).whole(output(ids[:k], texts[k], True, kind))
        assert choice.finish.reason == reason, k
        # chat
        message = _message(choice.parsed)
        assert [c["function"]["name"] for c in message.get("tool_calls", [])] == names, k
        assert all(json.loads(c["function"]["arguments"]) == json.loads(dict(CALLS)[c["function"]["name"]])
                   for c in message.get("tool_calls", []))
        assert no_dsml(message["content"], message["reasoning_content"]), (k, message)
        # Responses
        items = responses.OutputItems()
        items.feed(choice.events)
        items.finish(responses._status(choice.finish))
        assert [i["name"] for i in items.items if i["type"] == "function_call"] == names, k
        assert responses._status(choice.finish) == ("incomplete" if reason == "length" else "completed")
        assert no_dsml(*[i["content"][0]["text"] for i in items.items if i["type"] == "message"])
        # Messages
        blocks = messages.ContentBlocks()
        blocks.feed(choice.events)
        blocks.finish()
        assert [b["name"] for b in blocks.blocks if b["type"] == "tool_use"] == names, k
        assert messages._stop(choice.finish)[0] == ("max_tokens" if reason == "length" else
                                                    "tool_use" if names else "end_turn")
        assert no_dsml(*[b["text"] for b in blocks.blocks if b["type"] == "text"])


def test_every_cut_streams_what_the_whole_parse_reports(tokens):
    ids, texts = tokens
    for k in range(1, len(ids) + 1):
        whole = ChoiceParser(PROMPT, CALL).whole(output(ids[:k], texts[k], True))
        updates = stream_updates(ids, texts, k, "length")
        assert updates[-1].finish.reason == whole.finish.reason, k
        assert all(u.finish is None for u in updates[:-1])
        # chat deltas rebuild the non-streamed message, and never carry a cut-off call
        call_ids: dict[int, str] = {}
        deltas = [d for u in updates for ev in u.events if (d := _delta(ev, call_ids)) is not None]
        content = "".join(d.get("content", "") for d in deltas)
        names = [tc["function"]["name"] for d in deltas for tc in d.get("tool_calls", []) if "id" in tc]
        assert content == whole.parsed.content and no_dsml(content), k
        assert names == [c.name for c in whole.parsed.tool_calls], k
        # the Responses and Messages streams announce exactly the items they end with
        items, blocks = responses.OutputItems(), messages.ContentBlocks()
        events = [e for u in updates for e in items.feed(u.events)] + items.finish(responses._status(whole.finish))
        added = [e["item"]["name"] for e in events if e["type"] == "response.output_item.added"
                 and e["item"]["type"] == "function_call"]
        assert added == [c.name for c in whole.parsed.tool_calls], k
        assert no_dsml(*[e.get("delta") for e in events])
        events = [e for u in updates for e in blocks.feed(u.events)] + blocks.finish()
        started = [e["content_block"]["name"] for e in events if e["type"] == "content_block_start"
                   and e["content_block"]["type"] == "tool_use"]
        assert started == [c.name for c in whole.parsed.tool_calls], k
        assert no_dsml(*[e["delta"].get("text") for e in events if e["type"] == "content_block_delta"])


# --- live: the same cuts through every API of a running server ----------------------------------------

NOW = {"type": "function", "function": {"name": "now", "description": "The time",
                                        "parameters": {"type": "object", "properties": {}}}}
QUESTION = [{"role": "user", "content": "What time is it?"}]
FORCE = {"type": "function", "function": {"name": "now"}}


@pytest.fixture(scope="module")
def cuts(server, tokens):
    """Token limits that cut the greedy forced call: inside it, just after its invoke closed (the block
    still open), and after the block closed (EOS not yet written). Found by running the same prompt
    and grammar on the native API, which also shows that it reports a cut as `length`, text untouched."""
    from banyan.runtime.server.chat_prompt import build_chat_prompt
    from banyan.runtime.server.models import ChatCompletionRequest

    prompt = build_chat_prompt(ChatCompletionRequest(messages=QUESTION, tools=[NOW], tool_choice=FORCE), False)
    params = {"temperature": 0, "max_new_tokens": 120, "structural_tag": prompt.grammar.value}
    with server.http() as http:
        full = http.post("/generate", json={"text": prompt.text, "sampling_params": params}).json()
        tok = load_tokenizer()
        ids = full["output_ids"]
        assert ids[-1] == tok.eos_token_id and full["meta_info"]["finish_reason"]["type"] == "stop"
        closed = next(k for k in range(len(ids)) if "</｜DSML｜invoke>" in tok.decode(ids[:k]))
        native = http.post("/generate", json={"text": prompt.text, "sampling_params": {**params, "max_new_tokens": 8}})
    assert native.json()["meta_info"]["finish_reason"]["type"] == "length"
    assert native.json()["text"] == tok.decode(ids[:8])  # the native API returns the raw text
    return {"inside": 8, "after_invoke": closed, "before_eos": len(ids) - 1}


# (cut, finish, reported calls)
CHAT_CASES = [("inside", "length", []), ("after_invoke", "length", ["now"]), ("before_eos", "tool_calls", ["now"])]


@pytest.mark.parametrize("cut, finish, names", CHAT_CASES)
def test_chat_cut(client, cuts, cut, finish, names):
    kwargs = dict(model="banyan-tiny", messages=QUESTION, tools=[NOW], tool_choice=FORCE, temperature=0,
                  max_tokens=cuts[cut])
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == finish
    assert [c.function.name for c in choice.message.tool_calls or []] == names and not choice.message.content
    if cut == "before_eos":
        return
    chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [finish]
    started = [tc.function.name for c in chunks for tc in c.choices[0].delta.tool_calls or [] if tc.id]
    assert started == names and all(not c.choices[0].delta.content for c in chunks)


def test_responses_cut(client, cuts):
    base = dict(model="banyan-tiny", input="What time is it?", temperature=0,
                tools=[{"type": "function", **NOW["function"]}], tool_choice={"type": "function", "name": "now"})
    r = client.responses.create(max_output_tokens=cuts["after_invoke"], **base)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert [(o.type, o.name, o.status) for o in r.output] == [("function_call", "now", "completed")]
    with client.responses.stream(max_output_tokens=cuts["inside"], **base) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete" and events[-1].response.output == []
    assert not any(e.type.startswith("response.output_item") for e in events)


def test_messages_cut(server, cuts):
    import anthropic

    from .conftest import API_KEY

    claude = anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)
    base = dict(model="banyan-tiny", messages=QUESTION, tool_choice={"type": "tool", "name": "now"},
                tools=[{"name": "now", "description": "The time", "input_schema": NOW["function"]["parameters"]}],
                extra_body={"temperature": 0})
    m = claude.messages.create(max_tokens=cuts["after_invoke"], **base)
    assert m.stop_reason == "max_tokens" and [(b.type, b.name) for b in m.content] == [("tool_use", "now")]
    with claude.messages.stream(max_tokens=cuts["inside"], **base) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens" and final.content == []
    assert not any(e.type == "content_block_start" for e in events)
