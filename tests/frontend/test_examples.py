"""The programs in `examples/` run on the in-process engine and produce what they promise
(checked for structure: the tiny model's answers are noise)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    if not (EXAMPLES / f"{name}.py").exists():
        pytest.skip("the examples/ folder is not beside this checkout's tests")
    spec = importlib.util.spec_from_file_location(f"banyan_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_few_shot_qa_reuses_the_shared_examples(local):
    states = load("few_shot_qa").main(local)
    cached = [s.get_meta_info("answer")["cached_tokens"] for s in states]
    assert len(states) == 4 and min(cached[1:]) >= 128  # one page of examples at least


def test_tree_of_thought(local):
    state = load("tree_of_thought").main(local)
    assert len(state["plan"]) == 3 and all(v in (" yes", " no") for v in state["verdict"])
    assert "Chosen plan:" in state.text() and isinstance(state["solution"], str)


def test_tool_agent_calls_its_tools(local):
    state = load("tool_agent").main(local, rounds=1)
    rounds = state.get_meta_info("reply")["tool_rounds"]
    assert rounds and rounds[0][0]["name"] in ("get_weather", "convert_currency")
    assert "<tool_result>" in state.text() and isinstance(state["reply_reasoning"], str)


def test_json_extraction_validates(local):
    person = load("json_extraction").main(local)
    assert set(person) == {"name", "age", "languages"} and 0 <= person["age"] <= 150
    assert len(person["languages"]) <= 4


def test_self_consistency_votes_over_branches(local):
    state = load("self_consistency").main(local)
    candidates = state["answer_candidates"]
    assert len(candidates) == 5 and all(re.fullmatch(r"[-+]?[0-9]+[ \n]*", c) for c in candidates)
    counts = {c.strip(): sum(x.strip() == c.strip() for x in candidates) for c in candidates}
    assert counts[state["answer"].strip()] == max(counts.values())
    assert json.dumps(state.messages()[-1]) and state.messages()[-1]["content"] == state["answer"]
