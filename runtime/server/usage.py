"""Usage blocks and finish reasons shared by the OpenAI routes."""

from __future__ import annotations

from ..tokenizer import SPECIAL_IDS


def reasoning_tokens(prompt_ids: list[int], output_ids: list[int]) -> int:
    """Completion tokens spent reasoning: those before `</think>` when the prompt opens a thinking
    block (a V4 thinking prompt ends with `<think>`), all of them if `</think>` never came."""
    if not prompt_ids or prompt_ids[-1] != SPECIAL_IDS["think"]:
        return 0
    end = SPECIAL_IDS["end_think"]
    return output_ids.index(end) if end in output_ids else len(output_ids)


def with_reasoning(meta: dict, prompt_ids: list[int], output_ids: list[int]) -> dict:
    """The engine's meta_info of a finished choice plus its `reasoning_tokens`."""
    return {**meta, "reasoning_tokens": reasoning_tokens(prompt_ids, output_ids)}


def usage(metas: list[dict]) -> dict:
    """Token accounting for one prompt: the prompt once, the completions of every choice."""
    prompt = metas[0]["prompt_tokens"] if metas else 0
    completion = sum(m["completion_tokens"] for m in metas)
    cached = max((m["cached_tokens"] for m in metas), default=0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": sum(m.get("reasoning_tokens", 0) for m in metas)}}


def add_usage(parts: list[dict]) -> dict:
    """The sum of usage blocks (one per prompt of a batch), nested details included."""
    def add(a: dict, b: dict) -> dict:
        return {k: add(a[k], b[k]) if isinstance(a[k], dict) else a[k] + b[k] for k in a}

    total = parts[0]
    for part in parts[1:]:
        total = add(total, part)
    return total


def finish_reason(meta: dict, tool_calls: bool = False, ended_in_tool_calls: bool = False) -> str:
    """OpenAI's finish reason. A turn with complete tool calls is `tool_calls`, unless the token
    limit stopped it inside a tool-calls block: then a call was cut off and it is `length`."""
    kind = (meta.get("finish_reason") or {}).get("type", "stop")
    if kind == "length" and (ended_in_tool_calls or not tool_calls):
        return "length"
    return "tool_calls" if tool_calls else kind
