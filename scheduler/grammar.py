"""Constrained decoding: xgrammar grammars as per-request token masks.

A `GrammarSpec` travels with a request over IPC; the scheduler process compiles it (LRU-cached)
and keeps a `GrammarState` per request, which gives the sampler a bool mask of the tokens allowed
next and advances on every sampled token. With `start_after` (V4's `</think>` in thinking mode)
the grammar stays inactive until that token is generated, so reasoning is free and only the
answer is constrained.

JSON is always constrained without free whitespace (`, ` and `: ` separators, as `json.dumps`
writes): a weak or random model can otherwise loop on whitespace forever.

`BackgroundCompiler` compiles on worker threads with a deadline, so that a slow grammar (a
regex like `[a-z]{1,20000}` takes xgrammar ~40 s) never stalls the scheduler's step loop.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache

import msgspec
import numpy as np
import torch
import xgrammar as xgr

KINDS = ("regex", "json_schema", "json_object", "choice", "ebnf", "structural_tag")
STOP_TOKEN = 1  # V4's EOS, its only stop token
DSML = "｜DSML｜"
_JSON_SEPARATORS = (", ", ": ")  # as json.dumps writes, and the V4 chat encoding with it


class GrammarError(ValueError):
    """An invalid grammar, or a token the grammar does not allow."""


class GrammarSpec(msgspec.Struct, frozen=True):
    kind: str  # one of KINDS
    value: str = ""  # regex / schema JSON / EBNF / structural-tag JSON; for "choice" a JSON list of strings
    start_after: int | None = None  # token id that activates the grammar (None: active from the start)


def _reason(exc: Exception) -> str:
    """xgrammar's message without its C++ location and assertion prefix."""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?", "", str(exc).strip())


# --- the DSML tool-call grammar, as an xgrammar structural tag -------------------------------------

def _const(text: str) -> dict:
    return {"type": "const_string", "value": text}


def _seq(*elements: dict) -> dict:
    return {"type": "sequence", "elements": list(elements)} if len(elements) != 1 else elements[0]


def _or(*elements: dict) -> dict:
    return {"type": "or", "elements": list(elements)} if len(elements) != 1 else elements[0]


def _optional(element: dict) -> dict:
    return {"type": "optional", "content": element}


def _raw_string(schema: dict) -> dict:
    """A `string="true"` value: one of the enum values, or raw text that cannot open a tag."""
    if schema.get("enum"):
        return _or(*[_const(str(v)) for v in schema["enum"]])
    most = schema.get("maxLength")
    return {"type": "regex", "pattern": f"[^<]{{{schema.get('minLength', 0)},{'' if most is None else most}}}"}


def _parameter(name: str, schema: dict) -> dict:
    """One parameter followed by its newline."""
    is_string = schema.get("type") == "string"
    if is_string:
        value = _raw_string(schema)
    else:
        json_grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, separators=_JSON_SEPARATORS)
        value = {"type": "grammar", "grammar": str(json_grammar)}
    head = f'<{DSML}parameter name="{name}" string="{"true" if is_string else "false"}">'
    return _seq(_const(head), value, _const(f"</{DSML}parameter>\n"))


def _parameters(function: dict) -> dict:
    """The parameters of one invoke, in `properties` order; required ones must appear, optional
    ones may be left out. An invoke without parameters renders as a blank line, so when none is
    required the block is either that blank line or starts at its first present parameter."""
    schema = function.get("parameters") or {}
    required = set(schema.get("required") or [])
    params = [(_parameter(k, s if isinstance(s, dict) else {}), k in required)
              for k, s in (schema.get("properties") or {}).items()]

    def from_(i: int) -> list[dict]:
        return [p if needed else _optional(p) for p, needed in params[i:]]

    if any(needed for _, needed in params):
        return _seq(*from_(0))
    return _or(_const("\n"), *[_seq(p, *from_(i + 1)) for i, (p, _) in enumerate(params)])


def tool_call_grammar(tools: list[dict], required_name: str | None = None,
                      start_after: int | None = None) -> GrammarSpec:
    """A grammar that forces a V4 DSML tool-call block, byte-exact to the chat encoding: one or more
    invokes of any of `tools` (OpenAI tool dicts), or exactly one of `required_name`, then EOS.

    Parameters follow each function's JSON schema: string-typed ones are raw text without `<`
    (`enum` and `maxLength`/`minLength` honoured), others compact JSON constrained by their schema.
    """
    functions = [t["function"] for t in tools if required_name is None or t["function"]["name"] == required_name]
    if not functions:
        raise GrammarError(f"no tool named {required_name!r}" if required_name else "no tools to call")
    try:
        invoke = _or(*[_seq(_const(f'<{DSML}invoke name="{f["name"]}">\n'), _parameters(f),
                            _const(f"</{DSML}invoke>\n")) for f in functions])
    except RuntimeError as exc:  # xgrammar rejects the parameter schema
        raise GrammarError(f"cannot build a tool-call grammar: {_reason(exc)}") from None
    calls = invoke if required_name else {"type": "plus", "content": invoke}
    block = _seq(_const(f"\n\n<{DSML}tool_calls>\n"), calls, _const(f"</{DSML}tool_calls>"))
    return GrammarSpec("structural_tag", json.dumps({"type": "structural_tag", "format": block},
                                                    ensure_ascii=False), start_after)


def _choice_ebnf(value: str) -> str:
    try:
        choices = json.loads(value)
    except json.JSONDecodeError:
        choices = None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise GrammarError(f"choice grammar needs a non-empty JSON list of strings, got {value!r}")
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


# --- compiling and matching --------------------------------------------------------------------------

def _tokenizer_info(tokenizer, vocab_size: int) -> xgr.TokenizerInfo:
    """The vocabulary for xgrammar, with special added tokens other than EOS (BOS, `<｜image｜>`,
    reserved placeholders) left empty: xgrammar would otherwise treat their text as ordinary
    text, and a detokenizer that skips special tokens would drop it from the output."""
    detected = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[STOP_TOKEN])
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special and i != STOP_TOKEN}
    vocab = [""] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        if i < vocab_size and i not in special:
            vocab[i] = token
    return xgr.TokenizerInfo(vocab, detected.vocab_type, vocab_size=vocab_size, stop_token_ids=[STOP_TOKEN],
                             add_prefix_space=detected.add_prefix_space)


class GrammarCompiler:
    """Compiles specs against the V4 vocabulary; building it indexes the tokenizer once (~1 s)."""

    def __init__(self, tokenizer, vocab_size: int, max_threads: int = 2, cache_size: int = 256) -> None:
        self.vocab_size = vocab_size
        # Our LRU bounds the cache; xgrammar's own would grow with every distinct grammar.
        self._compiler = xgr.GrammarCompiler(_tokenizer_info(tokenizer, vocab_size), max_threads=max_threads,
                                             cache_enabled=False)
        self._compile_cached = lru_cache(maxsize=cache_size)(self._compile)

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        """The compiled grammar (LRU-cached by spec); raises GrammarError for an invalid one."""
        return self._compile_cached(spec)

    def _compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        c = self._compiler
        compilers = {
            "regex": lambda v: c.compile_regex(v),
            "json_schema": lambda v: c.compile_json_schema(v, any_whitespace=False, separators=_JSON_SEPARATORS),
            "json_object": lambda v: c.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                           separators=_JSON_SEPARATORS),
            "choice": lambda v: c.compile_grammar(_choice_ebnf(v)),
            "ebnf": lambda v: c.compile_grammar(v),
            "structural_tag": lambda v: c.compile_structural_tag(v),
        }
        if spec.kind not in compilers:
            raise GrammarError(f"unknown grammar kind {spec.kind!r}; expected one of {', '.join(KINDS)}")
        try:
            return compilers[spec.kind](spec.value)
        except RuntimeError as exc:  # xgrammar reports every invalid input as a RuntimeError
            raise GrammarError(f"invalid {spec.kind} grammar: {_reason(exc)}") from None

    def new_state(self, spec: GrammarSpec, prompt_ids: list[int] | None = None) -> GrammarState:
        """A fresh matcher for one request. With `start_after` set, the grammar activates once that
        token is accepted from the output, or from the start if the prompt already ends with it."""
        active = spec.start_after is None or bool(prompt_ids) and prompt_ids[-1] == spec.start_after
        return GrammarState(self.compile(spec), self.vocab_size, spec.start_after, active)


class GrammarState:
    """One request's position in its grammar."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int, start_after: int | None,
                 active: bool) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size
        self.start_after = start_after
        self.active = active

    def allowed(self) -> torch.Tensor | None:
        """Bool `[vocab_size]` of the tokens allowed next; None while the grammar is inactive or
        after it finished (then nothing constrains the output, e.g. under `ignore_eos`)."""
        if not self.active or self.done:
            return None
        self._matcher.fill_next_token_bitmask(self._bitmask)
        # Token 32*i + j is bit j of little-endian int32 word i, i.e. bit order "little" over bytes.
        # numpy, not torch: torch would split this small op across its thread pool, and the
        # hand-off costs milliseconds when the cores are busy.
        bits = np.unpackbits(self._bitmask[0].numpy().view(np.uint8), count=self.vocab_size, bitorder="little")
        return torch.from_numpy(bits).view(torch.bool)

    def accept(self, token: int) -> None:
        """Advance by one generated token; raises GrammarError for a token the grammar rejects."""
        if not self.active:
            self.active = token == self.start_after
        elif not self.done and not self._matcher.accept_token(token):
            raise GrammarError(f"token {token} is not allowed by the grammar here")

    @property
    def done(self) -> bool:
        """The grammar reached its end: EOS was accepted."""
        return self._matcher.is_terminated()


class PendingGrammar:
    """A request's grammar compiling on a worker thread. It has `timeout` seconds from the moment
    its compile starts: neither the wait for a free worker nor the one-time vocabulary index counts."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.future: Future | None = None
        self.started: float | None = None  # set by the worker as it starts compiling

    def result(self) -> GrammarState | None:
        """The request's grammar state, or None while it is still compiling. Raises GrammarError
        for an invalid grammar, or one still compiling at its deadline."""
        if not self.future.done():
            if self.started is None or time.monotonic() - self.started < self.timeout:
                return None
            self.cancel()
            raise GrammarError(f"the grammar did not compile within {self.timeout:g} s; simplify it "
                               "(large repetition counts in regex patterns are the usual cause)")
        try:
            return self.future.result()
        except GrammarError:
            raise
        except Exception as exc:  # one request's grammar must not take the scheduler down
            raise GrammarError(f"cannot compile the grammar: {type(exc).__name__}: {exc}") from None

    def cancel(self) -> None:
        """Drop a compile still queued; one already running cannot be interrupted and finishes
        in the background, unused."""
        self.future.cancel()


class BackgroundCompiler:
    """`GrammarCompiler` on a small thread pool (xgrammar releases the GIL while compiling).

    The pool is small on purpose: a compile past its deadline keeps its thread until xgrammar
    returns, so runaway grammars can occupy at most `threads` cores (each compile runs on one
    thread, so that it takes cores from the model's steps no faster). The vocabulary index is
    built on first use, on a worker as well."""

    def __init__(self, tokenizer, vocab_size: int, timeout: float, threads: int = 2) -> None:
        self.timeout = timeout
        self._make = lambda: GrammarCompiler(tokenizer, vocab_size, max_threads=1)
        self._compiler: GrammarCompiler | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="banyan-grammar")

    def _state(self, spec: GrammarSpec, prompt_ids: list[int], pending: PendingGrammar) -> GrammarState:
        with self._lock:
            if self._compiler is None:
                self._compiler = self._make()
        pending.started = time.monotonic()
        return self._compiler.new_state(spec, prompt_ids)

    def submit(self, spec: GrammarSpec, prompt_ids: list[int]) -> PendingGrammar:
        pending = PendingGrammar(self.timeout)
        pending.future = self._pool.submit(self._state, spec, prompt_ids, pending)
        return pending
