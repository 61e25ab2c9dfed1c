"""HTTP backends of the online benchmark: one streamed request, timed chunk by chunk.

`openai-chat` and `openai-completions` read OpenAI's SSE chunks and the final usage block
(`stream_options.include_usage`); `banyan` reads the native `/generate` stream, whose
events carry the cumulative text and `meta_info` token counts.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import httpx

from .metrics import RequestRecord
from .workloads import BenchRequest


@dataclass
class Sampling:
    temperature: float = 0.0
    ignore_eos: bool = True


class Backend(ABC):
    path: str

    def __init__(self, model: str, sampling: Sampling) -> None:
        self.model, self.sampling = model, sampling

    @abstractmethod
    def payload(self, request: BenchRequest) -> dict: ...

    @abstractmethod
    def consume(self, event: dict, record: RequestRecord) -> bool:
        """Fold one streamed event into `record`; True when it carried output."""

    async def send(self, client: httpx.AsyncClient, request: BenchRequest) -> RequestRecord:
        """Stream one request to the end; failures become the record's `error`."""
        record = RequestRecord(start=time.perf_counter())
        try:
            async with client.stream("POST", self.path, json=self.payload(request)) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")
                    record.error = f"HTTP {resp.status_code}: {body[:200]}"
                else:
                    await self._read(resp, record)
        except (httpx.HTTPError, ValueError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.end = time.perf_counter()
        if record.ok and not record.output_tokens:  # a server without usage: one token per chunk
            record.output_tokens = len(record.chunk_times)
        return record

    async def _read(self, resp: httpx.Response, record: RequestRecord) -> None:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                record.error = f"stream error: {event['error'].get('message', event['error'])}"
                return
            if self.consume(event, record):
                record.chunk_times.append(time.perf_counter())


class _OpenAI(Backend):
    def _common(self, request: BenchRequest) -> dict:
        return {"model": self.model, "max_tokens": request.max_tokens, "temperature": self.sampling.temperature,
                "ignore_eos": self.sampling.ignore_eos, "stream": True, "stream_options": {"include_usage": True}}

    def consume(self, event: dict, record: RequestRecord) -> bool:
        if usage := event.get("usage"):
            record.prompt_tokens = usage.get("prompt_tokens", 0)
            record.output_tokens = usage.get("completion_tokens", 0)
            record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        text = "".join(self.choice_text(c) for c in event.get("choices") or [])
        record.text += text
        return bool(text)

    @staticmethod
    @abstractmethod
    def choice_text(choice: dict) -> str: ...


class OpenAIChat(_OpenAI):
    path = "/v1/chat/completions"

    def payload(self, request: BenchRequest) -> dict:
        for m in request.messages:
            if not isinstance(m["content"], str):
                raise ValueError("the openai-chat backend needs text prompts (use --prompt-kind words)")
        return {**self._common(request), "messages": request.messages}

    @staticmethod
    def choice_text(choice: dict) -> str:
        """Answer, reasoning and tool-call text all count as output."""
        delta = choice.get("delta") or {}
        calls = "".join((c.get("function") or {}).get("arguments") or (c.get("function") or {}).get("name") or ""
                        for c in delta.get("tool_calls") or [])
        return (delta.get("reasoning_content") or "") + (delta.get("content") or "") + calls


class OpenAICompletions(_OpenAI):
    path = "/v1/completions"

    def payload(self, request: BenchRequest) -> dict:
        return {**self._common(request), "prompt": request.prompt()}

    @staticmethod
    def choice_text(choice: dict) -> str:
        return choice.get("text") or ""


class Native(Backend):
    path = "/generate"

    def payload(self, request: BenchRequest) -> dict:
        prompt = request.prompt()
        return {"text" if isinstance(prompt, str) else "input_ids": prompt, "stream": True,
                "sampling_params": {"max_new_tokens": request.max_tokens, "temperature": self.sampling.temperature,
                                    "ignore_eos": self.sampling.ignore_eos}}

    def consume(self, event: dict, record: RequestRecord) -> bool:
        meta = event.get("meta_info") or {}
        grew = meta.get("completion_tokens", 0) > record.output_tokens or len(event.get("text", "")) > len(record.text)
        record.text = event.get("text", record.text)
        record.prompt_tokens = meta.get("prompt_tokens", record.prompt_tokens)
        record.output_tokens = meta.get("completion_tokens", record.output_tokens)
        record.cached_tokens = meta.get("cached_tokens", record.cached_tokens)
        return grew


BACKENDS: dict[str, type[Backend]] = {"openai-chat": OpenAIChat, "openai-completions": OpenAICompletions,
                                      "banyan": Native}
