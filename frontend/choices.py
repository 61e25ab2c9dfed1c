"""`select`: choose one of several continuations by the logprobs of their tokens.

Each choice is scored on the tokens it adds to the prompt: the prompt and prompt + choice are
tokenized, and the tokens after their common prefix are scored as prompt tokens (so a choice
that merges with the prompt's last token is scored with that token, SGLang's token healing).
The methods have SGLang's call signature, so SGLang's own methods work here too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.text import TextBackend

TokenLogprobs = list[list[Any]]  # per token: [logprob, token_id, text or None]


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] | None = None


class ChoicesSamplingMethod(ABC):
    requires_unconditional_logprobs = False

    @abstractmethod
    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[TokenLogprobs], output_token_logprobs: list[TokenLogprobs],
                 unconditional_token_logprobs: list[TokenLogprobs] | None = None) -> ChoicesDecision: ...


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        best = max(range(len(choices)), key=lambda i: normalized_prompt_logprobs[i])
        return ChoicesDecision(choices[best], {"normalized_prompt_logprobs": normalized_prompt_logprobs,
                                               "input_token_logprobs": input_token_logprobs,
                                               "output_token_logprobs": output_token_logprobs})


class GreedyTokenSelection(ChoicesSamplingMethod):
    """What greedy decoding would pick: the choices with the best first token, then among those
    the best second token, and so on. A shorter choice is padded with its own mean logprob."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        longest = max(len(option) for option in input_token_logprobs)
        rows = []
        for option in input_token_logprobs:
            logprobs = [token[0] for token in option]
            rows.append(logprobs + [_mean(logprobs)] * (longest - len(logprobs)))
        remaining = list(range(len(choices)))
        for column in range(longest):
            best = max(rows[i][column] for i in remaining)
            remaining = [i for i in remaining if rows[i][column] == best]
            if len(remaining) == 1:
                break
        return ChoicesDecision(choices[remaining[0]], {"normalized_prompt_logprobs": normalized_prompt_logprobs,
                                                       "input_token_logprobs": input_token_logprobs,
                                                       "output_token_logprobs": output_token_logprobs,
                                                       "greedy_logprob_matrix": rows})


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain the most, on average, from the prompt: mean of
    logprob(token | prompt) - logprob(token | choice alone); the choice's first token has no
    unconditional logprob and counts as 0."""

    requires_unconditional_logprobs = True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional token logprobs")
        scores = [_mean([c[0] - (u[0] or 0.0) for c, u in zip(cond, uncond)])
                  for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs)]
        best = max(range(len(choices)), key=lambda i: scores[i])
        return ChoicesDecision(choices[best], {"normalized_prompt_logprobs": normalized_prompt_logprobs,
                                               "input_token_logprobs": input_token_logprobs,
                                               "output_token_logprobs": output_token_logprobs,
                                               "unconditional_token_logprobs": unconditional_token_logprobs,
                                               "normalized_unconditional_prompt_logprobs": scores})


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def choose(backend: "TextBackend", prompt: str, choices: list[str], method: ChoicesSamplingMethod) -> ChoicesDecision:
    """Score `choices` after `prompt` on a backend with prompt logprobs and let `method` decide."""
    if not choices:
        raise ValueError("select needs at least one choice")
    backend.cache_prefix(prompt)  # the choices then share the cached prompt
    prompt_ids = backend.tokenize(prompt)
    sequences = [backend.tokenize(prompt + choice) for choice in choices]
    starts = [max(1, _common_prefix(prompt_ids, ids)) for ids in sequences]  # token 0 has no logprob
    for choice, ids, start in zip(choices, sequences, starts):
        if start >= len(ids):
            raise ValueError(f"choice {choice!r} adds no scorable token to the prompt")
    tails = [ids[start:] for ids, start in zip(sequences, starts)]
    logprobs = backend.token_logprobs(sequences, starts)
    scored = [[[lp, token, None] for lp, token in zip(lps, tail)] for lps, tail in zip(logprobs, tails)]
    unconditional = None
    if method.requires_unconditional_logprobs:
        alone = backend.token_logprobs(tails, [0] * len(tails))
        unconditional = [[[lp, token, None] for lp, token in zip(lps, tail)] for lps, tail in zip(alone, tails)]
    return method(choices=list(choices), normalized_prompt_logprobs=[_mean(lps) for lps in logprobs],
                  input_token_logprobs=scored, output_token_logprobs=[[] for _ in choices],
                  unconditional_token_logprobs=unconditional)
