"""`/v1/messages`: the Anthropic Messages API, run as a chat turn (`turn`), so that agents written
for the Anthropic SDK can use V4 (vLLM and DeepSeek's own API serve it too).

Request: `system` (text or text blocks), `messages` with text, `tool_use`, `tool_result` and
`thinking` blocks, custom `tools` (`input_schema`), `tool_choice` (`auto`, `any`, `tool`,
`none`), `thinking` (`enabled` with its `budget_tokens`, `adaptive`, `between_tools`: V4
thinking; `disabled`; the budget is not enforced on its own: `max_tokens` bounds reasoning and
answer together), `output_config` (`effort` as chat's `reasoning_effort`, `format` a JSON
schema), `stop_sequences`, `temperature`, `top_p`, `top_k`. Errors have Anthropic's body (see
`errors`).

Response: `thinking`, `text` and `tool_use` content blocks; `stop_reason` is `end_turn`,
`stop_sequence`, `tool_use` or `max_tokens` (a cut-off tool call is never reported); `usage`
counts prompt tokens read from the prefix cache as `cache_read_input_tokens`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from ..encoding import ContentDelta, Event, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from .errors import APIError, anthropic_error_body, invalid
from .models import ChatCompletionRequest, MessagesRequest, chat_request
from .sse import event, start_stream
from .state import ServerState, get_state
from .turn import Finish, Turn, complete, prepare, prepend, updates

router = APIRouter()

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
THINKING = {"enabled": "enabled", "adaptive": "enabled", "between_tools": "enabled", "disabled": "disabled"}


# --- request -> chat request ---------------------------------------------------------------------

def _texts(content: Any, where: str) -> list[str]:
    """A string, or text blocks, as a list of texts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or a list of content blocks", where)
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise invalid(f"{where}[{i}]: only text blocks are supported here, got {kind!r}", f"{where}[{i}]")
        texts.append(block["text"])
    return texts


def _user(blocks: list, where: str) -> list[dict]:
    """A user turn's blocks as chat messages: tool results become tool messages, texts user messages
    (the V4 encoder folds them back into one user turn)."""
    out = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            out.append({"role": "user", "content": _texts([block], f"{where}[{i}]")[0]})
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise invalid(f"{where}[{i}].tool_use_id must be a string", f"{where}[{i}].tool_use_id")
            result = "\n\n".join(_texts(block.get("content") or "", f"{where}[{i}].content"))
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": result})
        else:
            raise invalid(f"{where}[{i}]: a user message takes text and tool_result blocks, got {kind!r}",
                          f"{where}[{i}]")
    return out


def _assistant(blocks: list, where: str) -> dict:
    message: dict = {"role": "assistant", "content": ""}
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            message["content"] += _texts([block], f"{where}[{i}]")[0]
        elif kind == "thinking":
            message["reasoning_content"] = (message.get("reasoning_content") or "") + str(block.get("thinking", ""))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise invalid(f"{where}[{i}]: tool_use needs a string id and name", f"{where}[{i}]")
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            message.setdefault("tool_calls", []).append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}})
        elif kind != "redacted_thinking":
            raise invalid(f"{where}[{i}]: an assistant message takes text, thinking and tool_use blocks, got "
                          f"{kind!r}", f"{where}[{i}]")
    return message


def chat_messages(body: MessagesRequest) -> list[dict]:
    messages = [{"role": "system", "content": "\n\n".join(_texts(body.system, "system"))}] if body.system else []
    for i, msg in enumerate(body.messages):
        where = f"messages[{i}]"
        role, content = msg.get("role"), msg.get("content")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role must be user or assistant", f"{where}.role")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise invalid(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
        elif role == "user":
            messages += _user(content, f"{where}.content")
        else:
            messages.append(_assistant(content, f"{where}.content"))
    return messages


def _tools(tools: list[dict] | None) -> list[dict] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or not tool.get("name"):
            raise invalid(f"tools[{i}]: only custom tools ({{'name', 'description', 'input_schema'}}) are supported",
                          f"tools[{i}]")
        function = {"name": tool["name"], "description": tool.get("description"),  # chat's key order
                    "parameters": tool.get("input_schema") or {"type": "object"}}
        out.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return out


def _tool_choice(choice: dict | None) -> Any:
    if choice is None:
        return None
    kind = choice.get("type")
    kind = kind if isinstance(kind, str) else None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind not in TOOL_CHOICES:
        raise invalid("tool_choice.type must be auto, any, tool (with a name) or none", "tool_choice")
    return TOOL_CHOICES[kind]


def _thinking(thinking: dict | None, max_tokens: int) -> dict | None:
    """Anthropic's thinking switch as DeepSeek's: `enabled` (with its budget), `adaptive` and
    `between_tools` think, `disabled` does not."""
    if thinking is None:
        return None
    kind = thinking.get("type")
    kind = kind if isinstance(kind, str) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or not 0 < budget <= max_tokens:
            raise invalid("thinking.budget_tokens must be a positive integer no larger than max_tokens",
                          "thinking.budget_tokens")
    if kind not in THINKING:
        raise invalid(f"thinking.type must be one of {', '.join(THINKING)}", "thinking.type")
    return {"type": THINKING[kind]}


def _output_format(config: dict) -> dict | None:
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise invalid("output_config.format must be {'type': 'json_schema', 'schema': {...}}", "output_config.format")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def to_chat(body: MessagesRequest) -> ChatCompletionRequest:
    config = body.output_config or {}
    return chat_request(model=body.model, messages=chat_messages(body), tools=_tools(body.tools),
                        tool_choice=_tool_choice(body.tool_choice), thinking=_thinking(body.thinking, body.max_tokens),
                        reasoning_effort=config.get("effort"), response_format=_output_format(config),
                        max_tokens=body.max_tokens, stop=body.stop_sequences, temperature=body.temperature,
                        top_p=body.top_p, top_k=body.top_k,
                        parallel_tool_calls=not (body.tool_choice or {}).get("disable_parallel_tool_use", False))


# --- parser events -> content blocks -------------------------------------------------------------

def _tool_input(arguments: str) -> dict:
    """`input` is an object; arguments that are not a JSON object become `{"arguments": text}`, the
    convention the V4 encoder reads back."""
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}


class ContentBlocks:
    """Builds the content blocks from parser events, and the stream events that announce them."""

    def __init__(self) -> None:
        self.blocks: list[dict] = []
        self._open: dict | None = None
        self._arguments = ""

    def feed(self, events: list[Event]) -> list[dict]:
        out: list[dict] = []
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                out += self._ensure({"type": "thinking", "thinking": "", "signature": ""})
                self._open["thinking"] += ev.text
                out.append(self._delta({"type": "thinking_delta", "thinking": ev.text}))
            elif isinstance(ev, ContentDelta):
                out += self._ensure({"type": "text", "text": ""})
                self._open["text"] += ev.text
                out.append(self._delta({"type": "text_delta", "text": ev.text}))
            elif isinstance(ev, ToolCallStart):
                out += self._close() + self._start({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                                                    "name": ev.name, "input": {}})
                self._arguments = ""
            elif isinstance(ev, ToolCallArgsDelta):
                self._arguments += ev.text
            elif isinstance(ev, ToolCallEnd):
                self._open["input"] = _tool_input(self._arguments)
                out.append(self._delta({"type": "input_json_delta", "partial_json": json.dumps(self._open["input"])}))
                out += self._close()
        return out

    def finish(self) -> list[dict]:
        return self._close()

    def _ensure(self, block: dict) -> list[dict]:
        if self._open is not None and self._open["type"] == block["type"]:
            return []
        return self._close() + self._start(block)

    def _start(self, block: dict) -> list[dict]:
        self._open = block
        self.blocks.append(block)
        return [{"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": dict(block)}]

    def _delta(self, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}

    def _close(self) -> list[dict]:
        block, self._open = self._open, None
        if block is None:
            return []
        extra = [self._delta({"type": "signature_delta", "signature": ""})] if block["type"] == "thinking" else []
        return extra + [{"type": "content_block_stop", "index": len(self.blocks) - 1}]


# --- the message object --------------------------------------------------------------------------

def _stop(finish: Finish) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence)."""
    if finish.reason == "tool_calls":
        return "tool_use", None
    if finish.reason == "length":
        return "max_tokens", None
    if isinstance(finish.matched, str):
        return "stop_sequence", finish.matched
    return "end_turn", None


def _usage(meta: dict) -> dict:
    cached = meta.get("cached_tokens", 0)
    return {"input_tokens": meta["prompt_tokens"] - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": meta.get("completion_tokens", 0),
            "output_tokens_details": {"thinking_tokens": meta.get("reasoning_tokens", 0)}}


def _message(mid: str, model: str, blocks: list[dict], finish: Finish | None, meta: dict) -> dict:
    reason, sequence = _stop(finish) if finish else (None, None)
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": reason, "stop_sequence": sequence, "usage": _usage(meta)}


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, http: Request):
    state = get_state(http)
    turn = await state.offload(prepare, state, to_chat(body))
    mid = f"msg_{uuid.uuid4().hex[:24]}"
    if body.stream:
        return await start_stream(_events(turn, state, mid), _error_event, done=None)
    (choice,) = await complete(state, http, turn)
    blocks = ContentBlocks()
    blocks.feed(choice.events)
    blocks.finish()
    return _message(mid, state.model_name, blocks.blocks, choice.finish, choice.finish.meta)


def _error_event(exc: APIError) -> str:
    return event(anthropic_error_body(exc.status, exc.message), "error")


def _sse(payload: dict) -> str:
    return event(payload, payload["type"])


async def _events(turn: Turn, state: ServerState, mid: str) -> AsyncIterator[str]:
    source = updates(state, turn)
    blocks = ContentBlocks()
    try:
        first = await anext(source)  # admission and parameter errors surface before any event
        start_meta = {"prompt_tokens": len(turn.calls[0].input_ids),
                      "cached_tokens": first.out["meta_info"].get("cached_tokens", 0), "completion_tokens": 0}
        yield _sse({"type": "message_start", "message": _message(mid, state.model_name, [], None, start_meta)})
        async for update in prepend(first, source):
            for payload in blocks.feed(update.events):
                yield _sse(payload)
            if update.finish is not None:
                for payload in blocks.finish():
                    yield _sse(payload)
                reason, sequence = _stop(update.finish)
                yield _sse({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                            "usage": _usage(update.finish.meta)})
                yield _sse({"type": "message_stop"})
    finally:
        await source.aclose()
