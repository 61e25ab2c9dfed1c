"""Sampling parameters of a `gen`: program-wide defaults (`run(temperature=...)`) overridden per
`gen`, in SGLang's names, plus the grammar that constrains the output."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

# The regexes SGLang's frontend uses for `gen(dtype=...)`, so programs decode the same way.
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""
_DTYPES = {int: (REGEX_INT, (" ", "\n")), float: (REGEX_FLOAT, (" ", "\n")), str: (REGEX_STR, ()),
           bool: (REGEX_BOOL, ())}
_DTYPE_NAMES = {"int": int, "float": float, "str": str, "string": str, "bool": bool}

_GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")


@dataclass(frozen=True)
class Grammar:
    kind: str  # one of _GRAMMAR_FIELDS
    value: str


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    stop_regex: tuple[str, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None  # xgrammar structural tag JSON (forced tool calls)

    def override(self, **values: Any) -> "SamplingParams":
        """A copy with every non-None value of `values` set; stop lists accept a single string and a
        JSON schema may be a dict."""
        changes = {k: v for k, v in values.items() if v is not None}
        for key in ("stop", "stop_token_ids", "stop_regex"):
            if key in changes:
                value = changes[key]
                changes[key] = (value,) if isinstance(value, (str, int)) else tuple(value)
        if isinstance(changes.get("json_schema"), dict):
            changes["json_schema"] = json.dumps(changes["json_schema"])
        return dataclasses.replace(self, **changes)

    def with_dtype(self, dtype: type | str | None) -> "SamplingParams":
        """`gen(dtype=int|float|str|bool)`: the dtype's regex (replacing any other) and stop strings."""
        if dtype is None:
            return self
        kind = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if kind not in _DTYPES:
            raise ValueError(f"invalid dtype {dtype!r}; expected int, float, str or bool")
        regex, stops = _DTYPES[kind]
        return dataclasses.replace(self.with_grammar("regex", regex), stop=self.stop + stops)

    def with_grammar(self, kind: str | None, value: str | None = None) -> "SamplingParams":
        """A copy constrained by `kind` only (the other grammar fields cleared; None: unconstrained)."""
        return dataclasses.replace(self, **{f: value if f == kind else None for f in _GRAMMAR_FIELDS})

    def grammar(self) -> Grammar | None:
        set_fields = [f for f in _GRAMMAR_FIELDS if getattr(self, f) is not None]
        if len(set_fields) > 1:
            raise ValueError(f"only one of {', '.join(_GRAMMAR_FIELDS)} may be set, got {', '.join(set_fields)}")
        return Grammar(set_fields[0], getattr(self, set_fields[0])) if set_fields else None

    def native(self) -> dict[str, Any]:
        """`sampling_params` for Banyan's `/generate` and `Engine.generate` (without the grammar)."""
        out = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
               "stop": list(self.stop), "stop_token_ids": list(self.stop_token_ids),
               "stop_regex": list(self.stop_regex), "temperature": self.temperature, "top_p": self.top_p,
               "top_k": self.top_k, "min_p": self.min_p, "frequency_penalty": self.frequency_penalty,
               "presence_penalty": self.presence_penalty, "ignore_eos": self.ignore_eos}
        if self.seed is not None:
            out["seed"] = self.seed
        return out


# Names a program run accepts as sampling defaults (`f.run(temperature=0)`); the rest are arguments.
DEFAULT_NAMES = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - set(_GRAMMAR_FIELDS)
