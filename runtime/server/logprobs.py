"""Token logprobs in the three response shapes: OpenAI chat, OpenAI completions, SGLang."""

from __future__ import annotations

from functools import lru_cache


class TokenTexts:
    """The text of single tokens (partial UTF-8 decodes to U+FFFD, as vLLM reports it)."""

    def __init__(self, tokenizer) -> None:
        self._text = lru_cache(maxsize=1 << 16)(lambda t: tokenizer.decode([t], skip_special_tokens=False))

    def __call__(self, token: int) -> str:
        return self._text(token)


def chat_logprobs(texts: TokenTexts, ids: list[int], logprobs: list[float],
                  tops: list[list[tuple[int, float]]]) -> list[dict]:
    """`choices[i].logprobs.content` entries."""
    def entry(token: int, lp: float) -> dict:
        text = texts(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in top]}
            for t, lp, top in zip(ids, logprobs, tops)]


def completion_logprobs(texts: TokenTexts, ids: list[int], logprobs: list[float | None],
                        tops: list[list[tuple[int, float]]], offset: int = 0) -> dict:
    """`choices[i].logprobs` of a text completion; `offset` is where the first token's text starts."""
    tokens = [texts(t) for t in ids]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": list(logprobs),
            "top_logprobs": [{texts(a): b for a, b in top} if top else None for top in tops],
            "text_offset": offsets}


def native_logprobs(texts: TokenTexts, ids: list[int], logprobs: list[float | None], with_text: bool) -> list:
    """SGLang's `[logprob, token_id, text or None]` triples."""
    return [[lp, t, texts(t) if with_text else None] for t, lp in zip(ids, logprobs)]


def native_top_logprobs(texts: TokenTexts, tops: list[list[tuple[int, float]]], with_text: bool) -> list:
    return [[[lp, t, texts(t) if with_text else None] for t, lp in top] if top else None for top in tops]
