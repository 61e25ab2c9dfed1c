"""`/v1/responses`: the OpenAI Responses API, run as a chat turn (`turn`).

Input items become chat messages: `message` (user, system, developer as system, assistant; text
parts), `function_call` (joins the assistant turn before it), `function_call_output` (a tool
message) and `reasoning` (the reasoning of the assistant turn that follows). `reasoning.effort`
chooses V4's mode as chat's `reasoning_effort` does (absent: the server default), `text.format`
is chat's `response_format`, `max_output_tokens` is `max_tokens`; tools are function tools.

Responses are not stored: `store` is reported false, and `previous_response_id` or
`conversation` are 400 (send the whole conversation as `input`).

Output: a `reasoning` item (its text as `reasoning_text` content), `message` items and
`function_call` items. A turn cut by the token limit has status `incomplete` with
`incomplete_details.reason: "max_output_tokens"` and never a cut-off function call.
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from ..encoding import ContentDelta, Event, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from .chat import call_id
from .chat_prompt import EFFORTS
from .errors import APIError, invalid
from .models import ChatCompletionRequest, ResponsesRequest, chat_request
from .sse import event, start_stream
from .state import ServerState, get_state
from .turn import Finish, Turn, complete, prepare, prepend, updates
from .usage import usage

router = APIRouter()

TEXT_PARTS = ("input_text", "output_text", "text", "reasoning_text", "summary_text")
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --- request -> chat request ---------------------------------------------------------------------

def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where} must be a string or a list of text parts", where)
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise invalid(f"{where}[{i}]: only text parts are supported, got {kind!r}", f"{where}[{i}]")
        texts.append(part["text"])
    return "".join(texts)


def _require(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise invalid(f"{where}.{key} must be a string", f"{where}.{key}")
    return value


def _reasoning_text(item: dict, where: str) -> str:
    parts = item.get("content") or item.get("summary") or []
    return _text(parts, f"{where}.content")


def input_messages(body: ResponsesRequest) -> list[dict]:
    """The chat messages that `instructions` and `input` spell."""
    if not body.input:
        raise invalid("input must not be empty", "input")
    messages: list[dict] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    if isinstance(body.input, str):
        return messages + [{"role": "user", "content": body.input}]
    reasoning = None  # for the next assistant turn
    for i, item in enumerate(body.input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where} must be an object", where)
        kind = item.get("type", "message")
        last = messages[-1] if messages else {}
        if kind == "message":
            role = item.get("role")
            role = ROLES.get(role) if isinstance(role, str) else None
            if role is None:
                raise invalid(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
            message = {"role": role, "content": _text(item.get("content"), f"{where}.content")}
            if role == "assistant":
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
        elif kind == "function_call":
            call = {"id": _require(item, "call_id", where), "type": "function",
                    "function": {"name": _require(item, "name", where), "arguments": item.get("arguments") or "{}"}}
            if last.get("role") != "assistant":
                last = {"role": "assistant", "content": "", "reasoning_content": reasoning}
                messages.append(last)
                reasoning = None
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _require(item, "call_id", where),
                             "content": _text(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":
            reasoning = _reasoning_text(item, where)
        else:
            raise invalid(f"{where}.type {kind!r} is not supported (message, function_call, function_call_output, "
                          "reasoning)", f"{where}.type")
    return messages


def _tools(tools: list[dict] | None) -> list[dict] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            raise invalid(f"tools[{i}]: only function tools ({{'type': 'function', 'name': ...}}) are supported",
                          f"tools[{i}]")
        out.append({"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters",
                                                                          "strict") if k in tool}})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            raise invalid("tool_choice must be none, auto, required or {'type': 'function', 'name': ...}",
                          "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: dict | None) -> dict | None:
    """`text.format` as chat's `response_format`."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid(f"text.format.type must be text, json_object or json_schema, got {kind!r}", "text.format.type")
    if kind != "json_schema":
        return {"type": kind}
    if not isinstance(fmt.get("schema"), dict):
        raise invalid("text.format.schema must be a JSON schema object", "text.format.schema")
    return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}}


def to_chat(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request that runs this Responses request."""
    if body.previous_response_id is not None or body.conversation is not None:
        raise invalid("Banyan does not store responses: previous_response_id and conversation are not supported; "
                      "send the whole conversation as input", "previous_response_id")
    effort = (body.reasoning or {}).get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in EFFORTS):
        raise invalid(f"reasoning.effort must be one of {', '.join(EFFORTS)}, got {effort!r}", "reasoning.effort")
    return chat_request(model=body.model, messages=input_messages(body), tools=_tools(body.tools),
                        tool_choice=_tool_choice(body.tool_choice), response_format=_response_format(body.text),
                        reasoning_effort=effort, max_tokens=body.max_output_tokens, temperature=body.temperature,
                        top_p=body.top_p, top_k=body.top_k, seed=body.seed,
                        parallel_tool_calls=body.parallel_tool_calls is not False)


# --- parser events -> output items ---------------------------------------------------------------

class OutputItems:
    """Builds the output items from parser events, and the stream events that announce them."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._open: dict | None = None  # the item still being written
        self._has_message = False

    def feed(self, events: list[Event]) -> list[dict]:
        """Stream events (without sequence numbers) for `events`."""
        out: list[dict] = []
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                out += self._ensure("reasoning")
                self._open["content"][0]["text"] += ev.text
                out.append(self._part_event("response.reasoning_text.delta", delta=ev.text))
            elif isinstance(ev, ContentDelta):
                out += self._ensure("message")
                self._open["content"][0]["text"] += ev.text
                out.append(self._part_event("response.output_text.delta", delta=ev.text, logprobs=[]))
            elif isinstance(ev, ToolCallStart):
                out += self._close("completed")
                out += self._start({"id": _new_id("fc"), "type": "function_call", "call_id": call_id(),
                                    "name": ev.name, "arguments": "", "status": "in_progress"})
            elif isinstance(ev, ToolCallArgsDelta):
                self._open["arguments"] += ev.text
                out.append(self._item_event("response.function_call_arguments.delta", delta=ev.text))
            elif isinstance(ev, ToolCallEnd):
                out += self._close("completed")
        return out

    def finish(self, status: str) -> list[dict]:
        """Close the last item (`incomplete` when the turn was cut); a completed turn without a call
        or text still answers with an (empty) message."""
        out = self._close("incomplete" if status == "incomplete" else "completed")
        if status == "completed" and not self._has_message and not any(i["type"] == "function_call"
                                                                          for i in self.items):
            out += self._ensure("message") + self._close("completed")
        return out

    # --- items -----------------------------------------------------------------------------------

    def _ensure(self, kind: str) -> list[dict]:
        if self._open is not None and self._open["type"] == kind:
            return []
        out = self._close("completed")
        if kind == "reasoning":
            item = {"id": _new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        else:
            self._has_message = True
            item = {"id": _new_id("msg"), "type": "message", "role": "assistant", "content": [],
                    "status": "in_progress"}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out += self._start(item)
        item["content"].append(part)
        out.append(self._part_event("response.content_part.added", part=dict(part)))
        return out

    def _start(self, item: dict) -> list[dict]:
        self._open = item
        self.items.append(item)
        return [{"type": "response.output_item.added", "output_index": len(self.items) - 1,
                 "item": copy.deepcopy(item)}]  # as it is now: its content is filled in later

    def _close(self, status: str) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = status
        index = len(self.items) - 1
        out = []
        if item["type"] == "function_call":
            out.append({"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                        "name": item["name"], "arguments": item["arguments"]})
        else:
            part = item["content"][0]
            kind = "reasoning_text" if item["type"] == "reasoning" else "output_text"
            extra = {} if item["type"] == "reasoning" else {"logprobs": []}
            out.append({"type": f"response.{kind}.done", "item_id": item["id"], "output_index": index,
                        "content_index": 0, "text": part["text"], **extra})
            out.append({"type": "response.content_part.done", "item_id": item["id"], "output_index": index,
                        "content_index": 0, "part": dict(part)})
        out.append({"type": "response.output_item.done", "output_index": index, "item": copy.deepcopy(item)})
        return out

    def _item_event(self, kind: str, **fields: Any) -> dict:
        return {"type": kind, "item_id": self._open["id"], "output_index": len(self.items) - 1, **fields}

    def _part_event(self, kind: str, **fields: Any) -> dict:
        return self._item_event(kind, content_index=0, **fields)


# --- the response object -------------------------------------------------------------------------

def _status(finish: Finish | None) -> str:
    if finish is None:
        return "in_progress"
    return {"length": "incomplete", "abort": "failed"}.get(finish.reason, "completed")


def _usage(meta: dict) -> dict:
    u = usage([meta])
    return {"input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"],
                                     "cache_write_tokens": 0},
            "output_tokens": u["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": u["total_tokens"]}


def _response(state: ServerState, body: ResponsesRequest, rid: str, created: int, items: list[dict],
              finish: Finish | None) -> dict:
    status = _status(finish)
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "model": state.model_name,
        "output": items, "usage": _usage(finish.meta) if finish else None,
        "error": {"code": "server_error", "message": "the generation was aborted"} if status == "failed" else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls is not False, "previous_response_id": None,
        "reasoning": {"effort": (body.reasoning or {}).get("effort"), "summary": None},
        "store": False, "temperature": body.temperature, "top_p": body.top_p,
        "text": body.text or {"format": {"type": "text"}}, "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [], "truncation": "disabled", "metadata": body.metadata or {}, "user": body.user,
        "background": False, "completed_at": int(time.time()) if status == "completed" else None,
    }


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, http: Request):
    state = get_state(http)
    turn = await state.offload(prepare, state, to_chat(body))
    rid, created = _new_id("resp"), int(time.time())
    if body.stream:
        counter = _Sequence()
        return await start_stream(_events(state, body, turn, rid, created, counter), counter.error_event, done=None)
    (choice,) = await complete(state, http, turn)
    output = OutputItems()
    output.feed(choice.events)
    output.finish(_status(choice.finish))
    return _response(state, body, rid, created, output.items, choice.finish)


class _Sequence:
    """Numbers the events of one stream, errors included."""

    def __init__(self) -> None:
        self.next = 0

    def event(self, payload: dict) -> str:
        payload = {**payload, "sequence_number": self.next}
        self.next += 1
        return event(payload, payload["type"])

    def error_event(self, exc: APIError) -> str:
        return self.event({"type": "error", "code": str(exc.code or exc.status), "message": exc.message,
                           "param": exc.param})


async def _events(state: ServerState, body: ResponsesRequest, turn: Turn, rid: str, created: int,
                  seq: _Sequence) -> AsyncIterator[str]:
    source = updates(state, turn)
    output = OutputItems()
    try:
        first = await anext(source)  # admission and parameter errors surface before any event
        initial = _response(state, body, rid, created, [], None)
        yield seq.event({"type": "response.created", "response": initial})
        yield seq.event({"type": "response.in_progress", "response": initial})
        async for update in prepend(first, source):
            for payload in output.feed(update.events):
                yield seq.event(payload)
            if update.finish is not None:
                status = _status(update.finish)
                for payload in output.finish(status):
                    yield seq.event(payload)
                final = _response(state, body, rid, created, output.items, update.finish)
                kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
                    status, "response.failed")
                yield seq.event({"type": kind, "response": final})
    finally:
        await source.aclose()
