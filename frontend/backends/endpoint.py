"""`RuntimeEndpoint`: a Banyan server's SGLang-native API (`/generate`).

Every request sends the program's whole text so far; the server's radix cache finds the prefix
that earlier requests, forks and the other programs of a batch already computed, and
`meta_info["cached_tokens"]` reports how much of the prompt it reused.
"""

from __future__ import annotations

from typing import Any

from ..sampling import SamplingParams
from .base import Completion, OnText
from .http import make_client, request_json, send, sse_events
from .text import TextBackend


class RuntimeEndpoint(TextBackend):
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float | None = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = make_client(base_url, api_key, timeout)
        self.model_info = request_json(self._http, "GET", "/get_model_info")

    def _body(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        sampling = params.native()
        grammar = params.grammar()
        if grammar is not None:
            sampling[grammar.kind] = grammar.value
        body = {"text": prompt, "sampling_params": sampling}
        if params.return_logprob:
            body.update(return_logprob=True, logprob_start_len=params.logprob_start_len,
                        top_logprobs_num=params.top_logprobs_num,
                        return_text_in_logprobs=params.return_text_in_logprobs)
        return body

    def complete(self, prompt: str, params: SamplingParams, on_text: OnText | None = None) -> Completion:
        body = self._body(prompt, params)
        if on_text is None:
            out = request_json(self._http, "POST", "/generate", body)
            return Completion(out["text"], out["meta_info"])
        text, meta = "", {}
        response = send(self._http, "POST", "/generate", {**body, "stream": True}, stream=True)
        try:
            for event in sse_events(response):  # each event carries the whole text so far
                delta, text, meta = event["text"][len(text):], event["text"], event["meta_info"]
                if delta:
                    on_text(delta)
        finally:
            response.close()
        return Completion(text, meta)

    def tokenize(self, text: str) -> list[int]:
        return request_json(self._http, "POST", "/tokenize", {"prompt": text, "add_special_tokens": False})["tokens"]

    def token_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float | None]]:
        # The server reports no logprob for the first scored token, so scoring starts one earlier.
        body = {"input_ids": sequences, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
                "logprob_start_len": [max(start - 1, 0) for start in starts]}
        outs = request_json(self._http, "POST", "/generate", body)
        return [[entry[0] for entry in out["meta_info"]["input_token_logprobs"][1 if start else 0:]]
                for out, start in zip(outs, starts)]

    def flush_cache(self) -> bool:
        return self._http.post("/flush_cache").status_code == 200  # 400 while requests are in flight

    def get_server_info(self) -> dict[str, Any]:
        return request_json(self._http, "GET", "/server_info")

    def shutdown(self) -> None:
        self._http.close()
