"""`TextBackend`: backends that continue V4 prompt text (Banyan's `/generate`, the engine).

A thinking turn takes two requests: the reasoning, stopped at `</think>` (or cut at its token
budget, then closed by us), and the answer after it. The answer request alone carries the
grammar (regex, JSON schema, forced tool call), so constraints never touch the reasoning, on
every backend, and the answer request extends the reasoning request's prompt, which the prefix
cache then holds.
"""

from __future__ import annotations

import dataclasses
import uuid
from abc import abstractmethod
from typing import Any

from ...runtime.encoding import ContentDelta, ParsedCompletion, StreamingParser, collect
from ...runtime.encoding.tokens import THINK_CLOSE
from ..choices import ChoicesDecision, ChoicesSamplingMethod, choose
from ..sampling import SamplingParams
from ..tools import forced_tool_grammar
from .base import Backend, OnText, TurnRequest, TurnResult, TurnSink, merge_meta


def _reasoning_params(params: SamplingParams, budget: int) -> SamplingParams:
    return dataclasses.replace(params.with_grammar(None), max_new_tokens=budget, min_new_tokens=0,
                               stop=(THINK_CLOSE,), stop_token_ids=(), stop_regex=(), return_logprob=False)


def _reasoning_closed(meta: dict[str, Any]) -> bool:
    """The reasoning request ended at `</think>` or at its budget (not at EOS)."""
    finish = meta.get("finish_reason") or {}
    return finish.get("type") == "length" or finish.get("matched") == THINK_CLOSE


class _AnswerParser:
    """Splits the answer text into content and DSML tool calls, streaming the content."""

    def __init__(self, tools: bool, on_content: OnText | None) -> None:
        self._parser = StreamingParser(thinking=False, tools=tools)
        self._events: list = []
        self._on_content = on_content

    def feed(self, delta: str) -> None:
        self._take(self._parser.feed(delta))

    def finish(self) -> ParsedCompletion:
        self._take(self._parser.finish())
        return collect(self._events, thinking=False)

    def _take(self, events: list) -> None:
        self._events += events
        if self._on_content is not None:
            for event in events:
                if isinstance(event, ContentDelta) and event.text:
                    self._on_content(event.text)


class TextBackend(Backend):
    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the backend tokenizes prompts."""

    @abstractmethod
    def token_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float | None]]:
        """For each sequence, the logprobs of its tokens from `starts[i]` on, given the tokens
        before them (None for token 0, which has no context)."""

    def cache_prefix(self, text: str) -> None:
        self.complete(text, SamplingParams(max_new_tokens=0))

    def select(self, prompt: str, choices: list[str], method: ChoicesSamplingMethod) -> ChoicesDecision:
        return choose(self, prompt, choices, method)

    def assistant_turn(self, request: TurnRequest, sink: TurnSink | None = None) -> TurnResult:
        metas, prompt, reasoning = [], request.prompt, None
        if request.thinking:
            budget = request.max_thinking_tokens or request.params.max_new_tokens
            phase = self.complete(prompt, _reasoning_params(request.params, budget), sink and sink.reasoning)
            metas.append(phase.meta)
            reasoning = phase.text
            if not _reasoning_closed(phase.meta):  # the model ended its turn inside the reasoning
                return TurnResult("", reasoning, [], merge_meta(metas))
            prompt += reasoning + THINK_CLOSE
        params = request.params
        if request.tool_choice != "auto":
            params = params.with_grammar("structural_tag", forced_tool_grammar(request.tools, request.tool_choice))
        parser = _AnswerParser(bool(request.tools), sink and sink.content)
        phase = self.complete(prompt, params, parser.feed if sink else None)
        if sink is None:
            parser.feed(phase.text)
        parsed = parser.finish()
        metas.append(phase.meta)
        calls = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": c.name, "arguments": c.arguments}} for c in parsed.tool_calls]
        return TurnResult(parsed.content, reasoning, calls, merge_meta(metas))
