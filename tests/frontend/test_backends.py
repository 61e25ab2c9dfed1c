"""Each primitive on real backends (a live `banyan serve` through `RuntimeEndpoint` and `OpenAI`,
and an in-process `LocalEngine`), on the tiny random model: structure, not answer quality."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import pytest

import banyan.frontend as sgl
from banyan.runtime.encoding.tokens import EOS

PAGE = 128  # the tiny model's page size (the largest compression ratio): prefixes are cached in whole pages

CALLS: list[dict] = []


def forecast(city: Literal["Paris", "Oslo"], days: Annotated[int, {"minimum": 1, "maximum": 5}]) -> dict:
    """The weather forecast for a city."""
    CALLS.append({"city": city, "days": days})
    return {"city": city, "days": days, "sky": "clear"}


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


SYSTEM = "You are a terse assistant. " + " ".join(f"Rule {i}: answer in at most {i} words." for i in range(12))


@sgl.function
def chat(s, question):
    s += sgl.system(SYSTEM)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=12))
    s += sgl.user("Now describe a person as JSON.")
    s += sgl.assistant(sgl.gen("person", max_tokens=40, json_schema=SCHEMA))
    s += sgl.user("Think about it first.")
    s += sgl.assistant(sgl.gen("thought", max_tokens=12, thinking=True))


@pytest.fixture(params=["endpoint", "openai", "local"])
def any_backend(request):
    return request.getfixturevalue({"endpoint": "endpoint", "openai": "openai_backend", "local": "local"}[request.param])


def test_same_program_on_every_backend(any_backend):
    state = chat.run(question="Say hi.", temperature=0)
    person = json.loads(state["person"])
    assert set(person) == {"name", "age"} and 0 <= person["age"] <= 120 and len(person["name"]) <= 12
    assert isinstance(state["thought_reasoning"], str) and isinstance(state["thought"], str)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["answer"] and messages[4]["content"] == state["person"]
    assert messages[6].get("reasoning_content") == state["thought_reasoning"]
    meta = state.get_meta_info("answer")
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] <= 12
    first_prompt = meta["prompt_tokens"]
    assert first_prompt - PAGE < state.get_meta_info("person")["cached_tokens"] <= first_prompt + 12


def test_greedy_answers_agree_across_backends(endpoint, openai_backend, local):
    @sgl.function
    def one_turn(s):
        s += sgl.user("Count to three.")
        s += sgl.assistant(sgl.gen("answer", max_tokens=10))

    answers = {name: one_turn.run(temperature=0, backend=b)["answer"]
               for name, b in (("endpoint", endpoint), ("openai", openai_backend), ("local", local))}
    assert answers["endpoint"] == answers["openai"] == answers["local"], answers


def test_forks_report_the_cached_shared_prefix(endpoint):
    @sgl.function
    def tree(s, context):
        s += sgl.user(context)
        with s.assistant():
            s += "Let me consider three ideas."
            prefix_tokens = len(endpoint.tokenize(s.text()))
            forks = s.fork(3)
            for i, f in enumerate(forks):
                f += f" Idea {i}:" + sgl.gen("idea", max_tokens=6, temperature=0.9, seed=i)
            s["fork_meta"] = [f.get_meta_info("idea") for f in forks]
            forks.join()
        return prefix_tokens

    context = " ".join(f"Fact {i}: the sky has colour number {i}." for i in range(40))
    assert endpoint.flush_cache()
    state = tree.run(context=context)
    assert len(state["idea"]) == 3
    for meta in state["fork_meta"]:  # the shared prefix was computed once, before the forks ran
        assert meta["prompt_tokens"] > state.ret_value > 300
        assert state.ret_value - PAGE < meta["cached_tokens"] <= state.ret_value


def test_forced_tool_call_runs_the_function_and_appends_its_result(endpoint):
    @sgl.function
    def agent(s):
        s += sgl.user("What is the weather in Paris for two days?")
        # A random model spells the forced DSML mostly one character per token: room for the whole call.
        s += sgl.assistant(sgl.gen("answer", max_tokens=300, tools=[forecast], tool_choice="forecast",
                                   max_tool_rounds=1, thinking=True, max_thinking_tokens=8))

    CALLS.clear()
    state = agent.run(temperature=0)
    rounds = state.get_meta_info("answer")["tool_rounds"]
    assert len(rounds) == 1 and rounds[0] and len(CALLS) == len(rounds[0])
    for call, done in zip(rounds[0], CALLS):
        assert call["name"] == "forecast" and json.loads(call["arguments"]) == done
        assert done["city"] in ("Paris", "Oslo") and 1 <= done["days"] <= 5
        result = json.dumps({"city": done["city"], "days": done["days"], "sky": "clear"})
        assert call["result"] == result
        assert f"<tool_result>{result}</tool_result>" in state.text()
    messages = state.messages()
    assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"][0]["function"]["name"] == "forecast"
    assert [m["content"] for m in messages if m["role"] == "tool"] == [c["result"] for c in rounds[0]]
    assert "DSML" not in messages[-1]["content"]  # the last turn (round limit reached) is an answer
    assert isinstance(state["answer_reasoning"], str) and messages[1]["reasoning_content"]


def test_tool_loop_on_the_openai_backend(openai_backend):
    @sgl.function
    def agent(s):
        s += sgl.user("Weather in Oslo?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=300, tools=[forecast], tool_choice="required",
                                   max_tool_rounds=1))

    CALLS.clear()
    state = agent.run(temperature=0)
    first = state.get_meta_info("answer")["tool_rounds"][0][0]
    assert CALLS[0] == json.loads(first["arguments"]) and first["name"] == "forecast"
    assert any(m["role"] == "tool" for m in state.messages())


def test_select_scores_match_between_server_and_engine(endpoint, local):
    @sgl.function
    def pick(s):
        s += "The colour of the sky is" + sgl.select("colour", [" blue", " green", " a deep red"])

    scores = [pick.run(backend=b).get_meta_info("colour")["normalized_prompt_logprobs"] for b in (endpoint, local)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)
    greedy = pick.bind().run(backend=endpoint)
    assert greedy["colour"] in (" blue", " green", " a deep red")


def test_select_on_the_openai_backend_names_the_missing_feature(openai_backend):
    @sgl.function
    def pick(s):
        s += "Yes or no?" + sgl.select("x", ["yes", "no"])

    with pytest.raises(sgl.UnsupportedFeatureError, match="select needs prompt logprobs"):
        pick.run()
    with pytest.raises(sgl.UnsupportedFeatureError, match="regex"):
        sgl.function(lambda s: s.__iadd__("n=" + sgl.gen("n", regex="[0-9]+"))).run()


def test_constraints_and_logprobs_on_the_endpoint(endpoint):
    @sgl.function
    def constrained(s):
        s += "Code: " + sgl.gen("code", regex=r"[A-Z]{3}-[0-9]{2}", max_tokens=20)
        s += "\nCount: " + sgl.gen("n", dtype=int, max_tokens=6)
        s += "\nWord: " + sgl.gen("w", max_tokens=5, return_logprob=True, top_logprobs_num=2)

    state = constrained.run(temperature=0)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", state["code"])
    assert re.fullmatch(r"[-+]?[0-9]+[ \n]*", state["n"])
    meta = state.get_meta_info("w")
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    assert all(len(top) == 2 for top in meta["output_top_logprobs"])


def test_thinking_stores_reasoning_and_answer_separately(endpoint):
    @sgl.function
    def think(s):
        s += sgl.user("Why?")
        s += sgl.assistant(sgl.gen("why", thinking="max", max_thinking_tokens=8, max_tokens=6))

    state = think.run(temperature=0)
    meta = state.get_meta_info("why")
    first = meta["requests"][0] if "requests" in meta else meta
    assert first["completion_tokens"] <= 8
    text = state.text()
    assert text.startswith("<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum")
    assert f"<think>{state['why_reasoning']}</think>{state['why']}" in text
    assert EOS in text


def test_run_batch_with_a_progress_bar(endpoint, capfd):
    @sgl.function
    def short(s, topic):
        s += f"A line about {topic}:" + sgl.gen("line", max_tokens=4)

    states = short.run_batch([{"topic": t} for t in ("cats", "dogs", "owls", "bees")], progress_bar=True,
                             num_threads=3, temperature=0)
    assert [s.text().split(":")[0] for s in states] == [f"A line about {t}" for t in ("cats", "dogs", "owls", "bees")]
    assert "4/4" in capfd.readouterr().err


def test_server_info_reports_the_page_size(endpoint):
    assert endpoint.get_server_info()["page_size"] == PAGE


def test_backend_errors_carry_the_server_message(server):
    with pytest.raises(sgl.BackendError, match="401"):
        sgl.RuntimeEndpoint(server.url, api_key="wrong")


@pytest.mark.parametrize("backend_name", ["endpoint", "openai_backend"])
def test_streamed_runs_match_plain_runs(backend_name, request):
    request.getfixturevalue(backend_name)  # the fixture makes it the default backend

    @sgl.function
    def story(s):
        s += sgl.user("Tell a story.")
        s += sgl.assistant(sgl.gen("story", max_tokens=24, thinking=True))

    @sgl.function
    def free(s):
        s += "Once upon a time" + sgl.gen("rest", max_tokens=16)

    # The thinking turn's reasoning streams first (its answer may be empty: 24 tokens in all).
    for program, name in ((story, "story_reasoning"), (free, "rest")):
        plain = program.run(temperature=0)
        streamed = program.run(temperature=0, stream=True)
        pieces = list(streamed.text_iter(name))
        assert len(pieces) > 1 and "".join(pieces) == streamed[name] == plain[name]
        assert streamed.text() == plain.text()
    assert streamed.get_meta_info("rest")["completion_tokens"] == plain.get_meta_info("rest")["completion_tokens"]
