"""OpenAI request fields -> engine sampling parameters and grammars."""

from __future__ import annotations

import json

from ...scheduler.grammar import GrammarSpec
from .errors import invalid
from .models import SamplingFields

_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
                "repetition_penalty")


def sampling_params(req: SamplingFields, max_tokens: int, vocab_size: int) -> dict:
    """The engine's `sampling_params` for one choice (n is expanded by the caller)."""
    out: dict = {"max_new_tokens": max_tokens, "ignore_eos": req.ignore_eos,
                 "skip_special_tokens": req.skip_special_tokens}
    for name in _PASSTHROUGH:
        value = getattr(req, name)
        if value is not None:
            out[name] = value
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if any(not s for s in stops):
            raise invalid("stop strings must be non-empty", "stop")
        out["stop"] = stops
    if req.stop_token_ids:
        out["stop_token_ids"] = list(req.stop_token_ids)
    if req.logit_bias:
        out["logit_bias"] = logit_bias(req.logit_bias, vocab_size)
    return out


def logit_bias(bias: dict[str, float], vocab_size: int) -> dict[int, float]:
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise invalid(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise invalid(f"logit_bias token id {token} is outside the vocabulary (0..{vocab_size - 1})",
                          "logit_bias")
        if not -100 <= value <= 100:
            raise invalid(f"logit_bias values must be in [-100, 100], got {value}", "logit_bias")
        out[token] = float(value)
    return out


def response_format_grammar(fmt: dict | None, start_after: int | None) -> GrammarSpec | None:
    """`response_format` (`text`, `json_object`, `json_schema`) as a grammar, or None."""
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", start_after=start_after)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", spec.get("schema_")) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise invalid("response_format.json_schema.schema must be a JSON schema object",
                          "response_format.json_schema")
        return GrammarSpec("json_schema", json.dumps(schema), start_after=start_after)
    raise invalid(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                  "response_format.type")


def resolve_max_tokens(requested: int | None, prompt_tokens: int, max_model_len: int) -> int:
    """The completion budget; 400 when the prompt plus the request exceed the context."""
    if requested is None:
        requested = max_model_len - prompt_tokens
        if requested <= 0:
            raise invalid(f"This model's maximum context length is {max_model_len} tokens, and the prompt "
                          f"has {prompt_tokens} tokens; there is no room for a completion.", "messages")
        return requested
    if prompt_tokens + requested > max_model_len:
        raise invalid(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                      f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} for the "
                      f"completion). Please reduce the prompt or the completion length.", "max_tokens")
    return requested
