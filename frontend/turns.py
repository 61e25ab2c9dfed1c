"""A gen that starts an assistant turn: reasoning, answer, and tool rounds.

Each round asks the backend for one assistant turn. When the model calls tools that have a
Python implementation, the calls and their results become messages (the results render as
`<tool_result>...</tool_result>` in a user turn) and the model continues in a new turn, until it
answers without calls, calls a tool that has no implementation, or `max_tool_rounds` rounds of
calls have run; calls left unexecuted stay in the turn's message and in `meta_info["tool_calls"]`.
A forced `tool_choice` applies to the first round only, so the model can answer after seeing
the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backends.base import Backend, TurnRequest, TurnSink, merge_meta
from .chat import Conversation
from .ir import Gen
from .sampling import SamplingParams
from .tools import Tool, as_tool


@dataclass
class TurnOutcome:
    content: str  # the final answer
    reasoning: str | None  # the final turn's reasoning (thinking gens)
    meta: dict[str, Any]


def _result(tools: dict[str, Tool], call: dict[str, Any]) -> str:
    name = call["function"]["name"]
    if name not in tools:
        return f"Error: unknown tool {name!r}; available tools: {', '.join(tools)}"
    return tools[name].call(call["function"]["arguments"])


def run_turns(backend: Backend, conversation: Conversation, gen: Gen, params: SamplingParams,
              sink: TurnSink | None) -> TurnOutcome:
    tools = {tool.name: tool for tool in map(as_tool, gen.tools)}
    conversation.use_tools([tool.schema for tool in tools.values()])
    tool_choice, rounds, metas = gen.tool_choice, [], []
    while True:
        if gen.thinks:
            conversation.start_thinking(gen.effort)
        request = TurnRequest(conversation.text(), conversation.chat_messages(), list(conversation.tools),
                              tool_choice, gen.thinks, gen.effort, gen.max_thinking_tokens, params)
        turn = backend.assistant_turn(request, sink)
        conversation.set_turn(turn.reasoning, turn.content, turn.tool_calls)
        metas.append(turn.meta)
        names = [call["function"]["name"] for call in turn.tool_calls]
        handed_back = any(name in tools and tools[name].fn is None for name in names)
        if not turn.tool_calls or handed_back or len(rounds) == gen.max_tool_rounds:
            meta = {**merge_meta(metas), "tool_rounds": rounds, "tool_calls": turn.tool_calls}
            return TurnOutcome(turn.content, turn.reasoning, meta)
        results = [_result(tools, call) for call in turn.tool_calls]
        conversation.add_tool_results(results)
        rounds.append([{"name": name, "arguments": call["function"]["arguments"], "result": result}
                       for name, call, result in zip(names, turn.tool_calls, results)])
        tool_choice = "auto"
