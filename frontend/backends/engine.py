"""`LocalEngine`: Banyan's in-process `Engine` (scheduler and detokenizer processes, no HTTP)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..sampling import SamplingParams
from .base import Completion, OnText
from .text import TextBackend

if TYPE_CHECKING:
    from ...runtime.engine import Engine


class LocalEngine(TextBackend):
    """`LocalEngine(model_path=None, **engine_options)` starts an engine (the embedded tiny model
    without a path) and shuts it down with the backend; `LocalEngine(engine=e)` wraps a running one."""

    def __init__(self, model_path: str | None = None, *, engine: "Engine | None" = None, **engine_options: Any) -> None:
        if engine is None:
            from ...runtime.engine import Engine  # starts processes and imports torch: only when used

            engine = Engine(model_path, **engine_options)
            self._owns_engine = True
        elif model_path is not None or engine_options:
            raise ValueError("pass either engine= or a model path and engine options, not both")
        else:
            self._owns_engine = False
        self.engine = engine

    def _logprobs(self, logprobs: list[float], ids: list[int], with_text: bool) -> list[list[Any]]:
        """Engine floats as SGLang's `[logprob, token_id, text]` entries."""
        decode = self.engine.tokenizer.decode
        return [[lp, token, decode([token]) if with_text else None] for lp, token in zip(logprobs, ids)]

    def _meta(self, meta: dict[str, Any], output_ids: list[int], prompt_ids: list[int] | None,
              params: SamplingParams) -> dict[str, Any]:
        out = {k: v for k, v in meta.items() if not k.endswith("logprobs")}
        if params.return_logprob:
            with_text = params.return_text_in_logprobs
            out["output_token_logprobs"] = self._logprobs(meta.get("output_token_logprobs", []), output_ids, with_text)
            out["output_top_logprobs"] = meta.get("output_top_logprobs", [])
            if prompt_ids is not None and "input_token_logprobs" in meta:
                start = max(params.logprob_start_len, 0)
                out["input_token_logprobs"] = self._logprobs(meta["input_token_logprobs"], prompt_ids[start:], with_text)
                out["input_top_logprobs"] = meta["input_top_logprobs"]
        return out

    def complete(self, prompt: str, params: SamplingParams, on_text: OnText | None = None) -> Completion:
        from ...scheduler.grammar import GrammarSpec

        grammar = params.grammar()
        wants_prompt = params.return_logprob and params.logprob_start_len >= 0
        prompt_ids = self.tokenize(prompt) if wants_prompt else None
        request = {"prompt": None if wants_prompt else prompt, "input_ids": prompt_ids,
                   "sampling_params": params.native(), "return_logprob": params.return_logprob,
                   "top_logprobs_num": params.top_logprobs_num, "logprob_start_len": params.logprob_start_len,
                   "grammar": GrammarSpec(grammar.kind, grammar.value) if grammar else None}
        if on_text is None:
            out = self.engine.generate(**request)
            return Completion(out["text"], self._meta(out["meta_info"], out["output_ids"], prompt_ids, params))
        text, ids, meta, logprobs = "", [], {}, {"output_token_logprobs": [], "output_top_logprobs": []}
        for chunk in self.engine.generate(**request, stream=True):  # each chunk carries the new text
            text += chunk["text"]
            ids += chunk["output_ids"]
            meta = {**meta, **chunk["meta_info"]}
            for key in logprobs:
                logprobs[key] += chunk["meta_info"].get(key, [])
            if chunk["text"]:
                on_text(chunk["text"])
        return Completion(text, self._meta({**meta, **logprobs}, ids, prompt_ids, params))

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text, add_special_tokens=False)

    def token_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float | None]]:
        def score(sequence: list[int], start: int) -> list[float | None]:
            out = self.engine.generate(input_ids=sequence, sampling_params={"max_new_tokens": 0},
                                       return_logprob=True, logprob_start_len=start)
            return out["meta_info"]["input_token_logprobs"]

        with ThreadPoolExecutor(len(sequences)) as pool:  # in flight together, batched by the scheduler
            return list(pool.map(score, sequences, starts))

    def flush_cache(self) -> bool:
        return self.engine.flush_cache()

    def get_server_info(self) -> dict[str, Any]:
        return {**self.engine.info, **self.engine.stats()}

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()
