"""Constrained decoding: xgrammar grammars as per-request token masks.

A `GrammarSpec` travels with a request over IPC; the scheduler process compiles it (cached)
and keeps a `GrammarState` per request, which gives the sampler a bool mask of allowed
tokens and advances on every sampled token. With `start_after` (V4's `</think>` in thinking
mode) the grammar stays inactive until that token is generated, so reasoning is free and
only the answer is constrained.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import msgspec
import torch
import xgrammar as xgr

KINDS = ("regex", "json_schema", "json_object", "choice", "ebnf", "structural_tag")
_BIT_WEIGHTS = torch.tensor([1 << i for i in range(32)], dtype=torch.int64)


class GrammarError(ValueError):
    """An invalid grammar, or a token the grammar does not allow."""


class GrammarSpec(msgspec.Struct, frozen=True):
    kind: str  # one of KINDS
    value: str = ""  # regex / schema JSON / EBNF / structural-tag JSON; for "choice" a JSON list of strings
    start_after: int | None = None  # token id that activates the grammar (None: active from the start)


DSML = "｜DSML｜"


def _literal(text: str) -> xgr.Grammar:
    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text, ensure_ascii=False)}" if text else 'root ::= ""')


def _raw_string(schema: dict) -> xgr.Grammar:
    """A `string="true"` value: raw text that cannot open a tag, or one of the enum values."""
    if schema.get("enum"):
        return xgr.Grammar.union(*[_literal(str(v)) for v in schema["enum"]])
    most = schema.get("maxLength")
    return xgr.Grammar.from_regex(f"[^<]{{{schema.get('minLength', 0)},{most}}}" if most is not None else "[^<]*")


def _parameter(name: str, schema: dict) -> xgr.Grammar:
    is_string = schema.get("type") == "string"
    head = f'<{DSML}parameter name="{name}" string="{"true" if is_string else "false"}">'
    value = _raw_string(schema) if is_string else xgr.Grammar.from_json_schema(schema, any_whitespace=False)
    return xgr.Grammar.concat(_literal(head), value, _literal(f"</{DSML}parameter>\n"))


def _invoke(function: dict) -> xgr.Grammar:
    """One `<｜DSML｜invoke>` block: required parameters in schema order, optional ones may be left out."""
    params = function.get("parameters") or {}
    required = set(params.get("required", []))
    parts = [_literal(f'<{DSML}invoke name="{function["name"]}">\n')]
    for name, schema in (params.get("properties") or {}).items():
        piece = _parameter(name, schema if isinstance(schema, dict) else {})
        parts.append(piece if name in required else xgr.Grammar.union(piece, _literal("")))
    parts.append(_literal(f"</{DSML}invoke>"))
    return xgr.Grammar.concat(*parts)


def tool_call_grammar(tools: list[dict], required_name: str | None = None,
                      start_after: int | None = None) -> GrammarSpec:
    """A grammar that forces one V4 DSML tool call of `tools` (of `required_name` only, if given),
    byte-exact to the chat encoding, with parameters following each function's JSON schema and
    no free whitespace (xgrammar's built-in `deepseek_v4` tag allows whitespace a random or
    weak model can loop on)."""
    functions = [t["function"] for t in tools if not required_name or t["function"]["name"] == required_name]
    if not functions:
        raise GrammarError(f"no tool named {required_name!r}")
    try:
        invokes = xgr.Grammar.union(*[_invoke(f) for f in functions])
        grammar = xgr.Grammar.concat(_literal(f"\n\n<{DSML}tool_calls>\n"), invokes,
                                     _literal(f"\n</{DSML}tool_calls>"))
    except Exception as exc:  # xgrammar raises several types for bad schemas
        raise GrammarError(f"cannot build a tool-call grammar: {exc}") from None
    return GrammarSpec("ebnf", str(grammar), start_after)


class GrammarCompiler:
    """Compiles specs against the V4 vocabulary; building it indexes the tokenizer once."""

    def __init__(self, tokenizer, vocab_size: int, max_threads: int = 2) -> None:
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[1])
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=max_threads)
        self.compile = lru_cache(maxsize=256)(self._compile)

    def _compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        c = self._compiler
        try:
            if spec.kind == "regex":
                return c.compile_regex(spec.value)
            if spec.kind == "json_schema":
                return c.compile_json_schema(spec.value, any_whitespace=False)
            if spec.kind == "json_object":
                return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if spec.kind == "choice":
                return c.compile_regex(_choice_regex(spec.value))
            if spec.kind == "ebnf":
                return c.compile_grammar(spec.value)
            if spec.kind == "structural_tag":
                return c.compile_structural_tag(spec.value)
        except GrammarError:
            raise
        except Exception as exc:  # xgrammar reports bad input as RuntimeError/ValueError with a reason
            raise GrammarError(f"invalid {spec.kind} grammar: {exc}") from None
        raise GrammarError(f"unknown grammar kind {spec.kind!r}; expected one of {', '.join(KINDS)}")

    def new_state(self, spec: GrammarSpec) -> "GrammarState":
        return GrammarState(self.compile(spec), self.vocab_size, spec.start_after)


def _choice_regex(value: str) -> str:
    try:
        choices = json.loads(value)
    except json.JSONDecodeError:
        choices = None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise GrammarError("choice grammar needs a JSON list of non-empty strings")
    return "|".join("(" + re.sub(r"([.^$*+?()\[\]{}|\\/])", r"\\\1", c) + ")" for c in choices)


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int, start_after: int | None) -> None:
        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self.active = start_after is None
        self.start_after = start_after
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def allowed(self) -> torch.Tensor | None:
        """Bool `[vocab_size]` of the tokens allowed next; None while the grammar is inactive."""
        if not self.active:
            return None
        self.matcher.fill_next_token_bitmask(self._bitmask)
        words = self._bitmask[0].to(torch.int64) & 0xFFFFFFFF
        bits = (words[:, None] & _BIT_WEIGHTS) != 0
        return bits.reshape(-1)[:self.vocab_size]

    def accept(self, token: int) -> None:
        if not self.active:
            self.active = token == self.start_after
            return
        if self.matcher.is_terminated():
            return
        if not self.matcher.accept_token(token):
            raise GrammarError(f"token {token} is not allowed by the grammar here")

    @property
    def done(self) -> bool:
        return self.active and self.matcher.is_terminated()
