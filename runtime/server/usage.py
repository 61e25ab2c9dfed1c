"""Usage blocks and finish reasons shared by the OpenAI routes."""

from __future__ import annotations


def usage(metas: list[dict]) -> dict:
    """Token accounting for one request: the prompt once, the completions of every choice."""
    prompt = metas[0]["prompt_tokens"] if metas else 0
    completion = sum(m["completion_tokens"] for m in metas)
    cached = max((m["cached_tokens"] for m in metas), default=0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def finish_reason(meta: dict, tool_calls: bool = False) -> str:
    if tool_calls:
        return "tool_calls"
    kind = (meta.get("finish_reason") or {}).get("type", "stop")
    return {"stop": "stop", "length": "length"}.get(kind, kind)
