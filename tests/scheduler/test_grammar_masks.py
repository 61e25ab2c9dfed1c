"""xgrammar token masks: outputs driven by adversarial random "models" stay in the grammar."""

from __future__ import annotations

import json
import re

import pytest
import torch

from banyan.runtime.tokenizer import load_tokenizer
from banyan.scheduler.grammar import GrammarCompiler, GrammarError, GrammarSpec, tool_call_grammar

VOCAB = 129280
END_THINK = 128822
EOS = 1


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def compiler(tok):
    return GrammarCompiler(tok, VOCAB)


def drive(compiler, tok, spec: GrammarSpec, seed: int, steps: int = 200, prefix: list[int] = ()) -> tuple[str, bool]:
    """Greedy decoding over random logits restricted by the grammar; returns the text and
    whether the grammar finished (EOS accepted)."""
    state = compiler.new_state(spec)
    for t in prefix:
        state.accept(t)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        logits = torch.randn(VOCAB, generator=gen)
        allowed = state.allowed()
        if allowed is not None:
            assert allowed.shape == (VOCAB,) and not allowed[len(tok):].any()
            logits[~allowed] = float("-inf")
        token = int(torch.argmax(logits))
        state.accept(token)
        if token == EOS:
            break
        out.append(token)
    return tok.decode(out, skip_special_tokens=False), state.done


@pytest.mark.parametrize("seed", range(3))
def test_regex_choice_and_schema(compiler, tok, seed):
    text, done = drive(compiler, tok, GrammarSpec("regex", r"[0-9]{3}-[a-z]{2,5}"), seed)
    assert done and re.fullmatch(r"[0-9]{3}-[a-z]{2,5}", text)
    choices = ["yes", "no way", "a.b (c)"]
    text, done = drive(compiler, tok, GrammarSpec("choice", json.dumps(choices)), seed)
    assert done and text in choices
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 50},
                                               "tag": {"type": "string", "enum": ["x", "y"]}},
              "required": ["ok", "n", "tag"], "additionalProperties": False}
    text, done = drive(compiler, tok, GrammarSpec("json_schema", json.dumps(schema)), seed)
    data = json.loads(text)
    assert done and set(data) == {"ok", "n", "tag"} and isinstance(data["ok"], bool)
    assert 0 <= data["n"] <= 50 and data["tag"] in ("x", "y")


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                     "units": {"type": "string", "maxLength": 3}},
    "required": ["city", "days"]}}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}
DSML_CALL = re.compile(r'\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="(\w+)">\n((?:<｜DSML｜parameter name="\w+" '
                       r'string="(?:true|false)">[^<]*</｜DSML｜parameter>\n)*)</｜DSML｜invoke>\n</｜DSML｜tool_calls>')


@pytest.mark.parametrize("seed", range(4))
def test_forced_tool_call_is_exact_dsml_following_the_schema(compiler, tok, seed):
    text, done = drive(compiler, tok, tool_call_grammar([WEATHER, CLOCK]), seed)
    match = DSML_CALL.fullmatch(text)
    assert done and match, text
    params = dict(re.findall(r'name="(\w+)" string="(?:true|false)">([^<]*)<', match.group(2)))
    if match.group(1) == "weather":
        assert params["city"] in ("Paris", "Oslo") and 1 <= int(params["days"]) <= 7
        assert len(params.get("units", "")) <= 3
    else:
        assert params == {}
    text, _ = drive(compiler, tok, tool_call_grammar([WEATHER, CLOCK], required_name="clock"), seed)
    assert DSML_CALL.fullmatch(text).group(1) == "clock"


def test_start_after_leaves_reasoning_free(compiler, tok):
    spec = GrammarSpec("regex", "[a-c]{2}", start_after=END_THINK)
    state = compiler.new_state(spec)
    state.accept(5000)
    assert state.allowed() is None
    state.accept(END_THINK)
    allowed = state.allowed()
    assert allowed is not None and not allowed[END_THINK] and allowed.sum() < 100
    text, done = drive(compiler, tok, spec, seed=0, prefix=[5000, END_THINK])
    assert done and re.fullmatch("[a-c]{2}", text)


def test_errors_name_the_problem(compiler):
    with pytest.raises(GrammarError, match="regex"):
        compiler.new_state(GrammarSpec("regex", "[unclosed"))
    with pytest.raises(GrammarError, match="json_schema"):
        compiler.new_state(GrammarSpec("json_schema", "{not json"))
    with pytest.raises(GrammarError, match="unknown grammar kind"):
        compiler.new_state(GrammarSpec("yaml", "x"))
    with pytest.raises(GrammarError, match="choice"):
        compiler.new_state(GrammarSpec("choice", "[]"))
    with pytest.raises(GrammarError, match="no tool named"):
        tool_call_grammar([CLOCK], required_name="nope")
    state = compiler.new_state(GrammarSpec("regex", "a"))
    with pytest.raises(GrammarError, match="not allowed"):
        state.accept(EOS + 1000)
