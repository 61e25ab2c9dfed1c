"""Grammar masks (`scheduler.grammar`): outputs driven by adversarial random "models" stay in the
grammar, forced tool calls are byte-exact DSML, and bad grammars fail with a clear message."""

from __future__ import annotations

import json
import re

import pytest
import torch

from banyan.runtime.encoding.dsml import render_tool_calls
from banyan.runtime.tokenizer import load_tokenizer
from banyan.scheduler.grammar import GrammarCompiler, GrammarError, GrammarSpec, tool_call_grammar

EOS = 1
THINK, END_THINK = 128821, 128822
PAD = 64  # model logits padded past the tokenizer
RANDOM_STEPS, MAX_STEPS = 40, 300
POLICIES = ("stubborn", "fresh")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The driver's vector ops are small: on a busy machine torch's thread hand-offs cost more
    than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def compiler(tok):
    return GrammarCompiler(tok, len(tok) + PAD)


@pytest.fixture(scope="module")
def special_ids(tok) -> list[int]:
    return [i for i, t in tok.added_tokens_decoder.items() if t.special and i != EOS]


@pytest.fixture(scope="module")
def closers(tok, compiler) -> torch.Tensor:
    """Tokens that end things: EOS, and text made only of `"`, `]`, `}`, `<`, `/` (a JSON string
    or container end, the start of a DSML closing tag)."""
    bonus = torch.zeros(compiler.vocab_size)
    for i, text in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if text and set(text) <= set('"]}</'):
            bonus[i] = 100.0
    bonus[EOS] = 100.0
    return bonus


def drive(compiler, tok, special_ids, closers, spec: GrammarSpec, seed: int, policy: str = "fresh",
          prefix: tuple[int, ...] = ()) -> tuple[str, bool]:
    """Sample inside the grammar: for `RANDOM_STEPS` the allowed token a random model likes best
    ("stubborn": one fixed logit vector, so it loops where it can; "fresh": new logits every step),
    then one that prefers closing tokens, so any grammar with a reachable end finishes. Returns the
    decoded output and whether the grammar finished."""
    state = compiler.new_state(spec)
    for t in prefix:
        state.accept(t)
    gen = torch.Generator().manual_seed(seed)
    fixed = torch.randn(compiler.vocab_size, generator=gen)
    out = []
    for step in range(MAX_STEPS):
        logits = fixed.clone() if policy == "stubborn" and step < RANDOM_STEPS else torch.randn(
            compiler.vocab_size, generator=gen)
        if step >= RANDOM_STEPS:
            logits += closers
        allowed = state.allowed()
        if allowed is not None:
            assert allowed.dtype == torch.bool and allowed.shape == (compiler.vocab_size,)
            assert not allowed[len(tok):].any() and not allowed[special_ids].any()
            logits[~allowed] = float("-inf")
        token = int(torch.argmax(logits))
        state.accept(token)
        if token == EOS:
            break
        out.append(token)
    return tok.decode(out, skip_special_tokens=True), state.done


@pytest.fixture
def run(compiler, tok, special_ids, closers):
    return lambda spec, seed, policy="fresh", prefix=(): drive(compiler, tok, special_ids, closers, spec, seed,
                                                               policy, prefix)


def accepts(compiler, tok, spec: GrammarSpec, text: str) -> bool:
    """Whether the grammar takes exactly `text` then EOS (tokenized any way: matching is by bytes)."""
    state = compiler.new_state(spec)
    try:
        for t in tok.encode(text, add_special_tokens=False) + [EOS]:
            state.accept(t)
    except GrammarError:
        return False
    return state.done


def assert_compact(text: str) -> None:
    """Outside strings, the only whitespace is the single space after `,` and `:`."""
    skeleton = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    assert not re.search(r"\s", skeleton.replace(", ", ",").replace(": ", ":")), text


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(2))
def test_regex_and_choice(run, seed, policy):
    text, done = run(GrammarSpec("regex", r"\d{3}-[a-z]+"), seed, policy)
    assert done and re.fullmatch(r"\d{3}-[a-z]+", text), text
    choices = ["yes", "no way", 'a.b (c)*|"q"', "ünï\\code"]
    text, done = run(GrammarSpec("choice", json.dumps(choices)), seed, policy)
    assert done and text in choices, text


SCHEMA = {"type": "object", "properties": {
    "ok": {"type": "boolean"},
    "n": {"type": "integer", "minimum": -5, "maximum": 50},
    "tag": {"type": "string", "enum": ["x", "y z"]},
    "name": {"type": "string", "maxLength": 8},
    "hours": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 23}, "maxItems": 3},
    "extra": {"type": "number"}},
    "required": ["ok", "n", "tag", "name", "hours"], "additionalProperties": False}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(2))
def test_json_schema_and_object(run, seed, policy):
    text, done = run(GrammarSpec("json_schema", json.dumps(SCHEMA)), seed, policy)
    data = json.loads(text)
    assert done and set(SCHEMA["required"]) <= set(data) <= set(SCHEMA["properties"]), text
    assert isinstance(data["ok"], bool) and type(data["n"]) is int and -5 <= data["n"] <= 50
    assert data["tag"] in ("x", "y z") and isinstance(data["name"], str) and len(data["name"]) <= 8
    assert len(data["hours"]) <= 3 and all(type(h) is int and 0 <= h <= 23 for h in data["hours"])
    assert isinstance(data.get("extra", 0.5), (int, float))
    assert_compact(text)
    text, done = run(GrammarSpec("json_object"), seed, policy)
    assert done and isinstance(json.loads(text), dict), text
    assert_compact(text)


WEATHER = {"type": "function", "function": {"name": "weather", "description": "Forecast", "parameters": {
    "type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"},
        "units": {"type": "string", "maxLength": 3},
        "note": {"type": "string"}},
    "required": ["city", "days", "units"]}}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}}
NOTE = {"type": "function", "function": {"name": "note", "parameters": {"type": "object", "properties": {
    "text": {"type": "string", "maxLength": 5}, "pin": {"type": "boolean"}}}}}
TOOLS = [WEATHER, CLOCK, NOTE]

_D = "｜DSML｜"
DSML_BLOCK = re.compile(rf"\n\n<{_D}tool_calls>\n((?:<{_D}invoke .*?</{_D}invoke>\n)+)</{_D}tool_calls>", re.S)
DSML_INVOKE = re.compile(rf'<{_D}invoke name="(\w+)">\n(\n|(?:<{_D}parameter .*?</{_D}parameter>\n)+)</{_D}invoke>\n',
                         re.S)
DSML_PARAM = re.compile(rf'<{_D}parameter name="(\w+)" string="(true|false)">([^<]*)</{_D}parameter>\n')


def tiled(pattern: re.Pattern, text: str) -> list[re.Match]:
    """The matches of `pattern`, which must cover `text` back to back."""
    matches = list(pattern.finditer(text))
    assert "".join(m.group(0) for m in matches) == text, text
    return matches


def parse_dsml(text: str) -> list[tuple[str, dict]]:
    """The `(name, arguments)` of each invoke; fails unless `text` is exactly one DSML block."""
    block = DSML_BLOCK.fullmatch(text)
    assert block, text
    calls = []
    for invoke in tiled(DSML_INVOKE, block.group(1)):
        params = [] if invoke.group(2) == "\n" else [m.groups() for m in tiled(DSML_PARAM, invoke.group(2))]
        calls.append((invoke.group(1), {k: v if s == "true" else json.loads(v) for k, s, v in params}))
    return calls


def check_call(name: str, args: dict) -> None:
    props = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    assert list(args) == [k for k in props["properties"] if k in args], "parameters out of schema order"
    assert set(props.get("required", [])) <= set(args)
    if name == "weather":
        assert args["city"] in ("Paris", "Oslo") and type(args["days"]) is int and 1 <= args["days"] <= 7
        assert isinstance(args.get("metric", True), bool) and len(args["units"]) <= 3
    elif name == "note":
        assert len(args.get("text", "")) <= 5 and isinstance(args.get("pin", True), bool)
    else:
        assert args == {}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("name", [None, "weather", "note"])
def test_forced_tool_calls_follow_the_schemas(run, name, seed, policy):
    text, done = run(tool_call_grammar(TOOLS, required_name=name), seed, policy)
    calls = parse_dsml(text)
    assert done and calls and (name is None or [n for n, _ in calls] == [name]), text
    for call in calls:
        check_call(*call)


def test_tool_call_grammar_is_byte_exact_to_the_chat_encoding(compiler, tok):
    spec = tool_call_grammar(TOOLS + [{"type": "function", "function": {"name": "plot", "parameters": {
        "type": "object", "properties": {"points": {"type": "array", "items": {"type": "integer"}},
                                         "style": {"type": "object"}}, "required": ["points"]}}}])
    good = [[("weather", '{"city": "Oslo", "days": 3, "units": "C"}')], [("clock", "{}")], [("note", "{}")],
            [("weather", '{"city": "Paris", "days": 7, "metric": false, "units": "", "note": "two\\nlines"}'),
             ("clock", "{}"), ("note", '{"pin": true}')],
            [("plot", '{"points": [1, -2, 30], "style": {"color": "red", "width": 2}}')]]
    for calls in good:
        assert accepts(compiler, tok, spec, render_tool_calls(calls)), calls
    bad = [[("weather", '{"city": "Rome", "days": 3, "units": "C"}')],  # not in the enum
           [("weather", '{"city": "Oslo", "days": 3}')],  # a required parameter missing
           [("weather", '{"city": "Oslo", "days": 9, "units": "C"}')],  # out of range
           [("weather", '{"city": "Oslo", "days": 3, "units": "four"}')],  # over maxLength
           [("weather", '{"days": 3, "city": "Oslo", "units": "C"}')],  # out of schema order
           [("weather", '{"city": "Oslo", "days": 3, "units": "C", "note": "a<b"}')],  # raw text holds no `<`
           [("nope", "{}")]]
    for calls in bad:
        assert not accepts(compiler, tok, spec, render_tool_calls(calls)), calls
    clock = render_tool_calls([("clock", "{}")])
    assert not accepts(compiler, tok, spec, clock.replace(">\n\n</", ">\n</"))  # no-parameter blank line
    plot = render_tool_calls([("plot", '{"points": [1, 2]}')])
    assert not accepts(compiler, tok, spec, plot.replace("[1, 2]", "[1,2]"))  # json.dumps spacing only
    assert not accepts(compiler, tok, spec, plot.replace("[1, 2]", "[1,  2]"))
    named = tool_call_grammar(TOOLS, required_name="clock")
    assert accepts(compiler, tok, named, clock)
    assert not accepts(compiler, tok, named, render_tool_calls([("clock", "{}"), ("clock", "{}")]))
    assert not accepts(compiler, tok, named, render_tool_calls([("note", "{}")]))


def test_start_after_leaves_reasoning_free(compiler, run):
    spec = GrammarSpec("regex", "[a-c]{2}", start_after=END_THINK)
    state = compiler.new_state(spec)
    for token in (THINK, 5000, 0):
        state.accept(token)
        assert state.allowed() is None and not state.done
    state.accept(END_THINK)
    allowed = state.allowed()
    assert allowed is not None and 0 < allowed.sum() < 50 and not allowed[END_THINK] and not allowed[EOS]
    assert compiler.new_state(spec, prompt_ids=[7, END_THINK]).allowed() is not None
    assert compiler.new_state(spec, prompt_ids=[END_THINK, 7]).allowed() is None
    text, done = run(spec, seed=0, prefix=(THINK, 5000, END_THINK))
    assert done and re.fullmatch("[a-c]{2}", text), text


def test_masks_are_exact_and_finish_with_eos(compiler, tok):
    state = compiler.new_state(GrammarSpec("choice", '["ab", "abc"]'))
    assert state.allowed().shape == (len(tok) + PAD,)
    a, b, c = (tok.convert_tokens_to_ids(x) for x in "abc")
    for token in (a, b):
        assert state.allowed()[token]
        state.accept(token)
    assert state.allowed().nonzero().flatten().tolist() == sorted([EOS, c])
    with pytest.raises(GrammarError, match="not allowed"):
        state.accept(a)
    with pytest.raises(GrammarError, match="not allowed"):
        state.accept(0)  # BOS: a special token is never text
    state.accept(EOS)
    assert state.done and state.allowed() is None
    assert compiler.compile(GrammarSpec("regex", "a+")) is compiler.compile(GrammarSpec("regex", "a+"))


def test_errors_name_the_problem(compiler):
    cases = [(GrammarSpec("regex", "[unclosed"), r"invalid regex grammar: .*Unclosed '\['"),
             (GrammarSpec("json_schema", "{not json"), "invalid json_schema grammar: .*JSON"),
             (GrammarSpec("ebnf", "root ::= "), "invalid ebnf grammar"),
             (GrammarSpec("structural_tag", '{"type": "structural_tag", "format": {"type": "bogus"}}'),
              "invalid structural_tag grammar: .*bogus"),
             (GrammarSpec("choice", "[]"), "choice grammar needs a non-empty JSON list of strings"),
             (GrammarSpec("yaml", "x"), "unknown grammar kind 'yaml'")]
    for spec, message in cases:
        with pytest.raises(GrammarError, match=message) as err:
            compiler.new_state(spec)
        assert "/project/cpp" not in str(err.value)
    with pytest.raises(GrammarError, match="no tool named 'nope'"):
        tool_call_grammar(TOOLS, required_name="nope")
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "frob"}}}}}
    with pytest.raises(GrammarError, match="cannot build a tool-call grammar: .*frob"):
        tool_call_grammar([bad_tool])
