"""Messages between the engine, scheduler and detokenizer processes (msgspec/msgpack)."""

from __future__ import annotations

import msgspec

from ..scheduler.grammar import GrammarSpec
from ..scheduler.sampling_params import SamplingParams


class GenerateRequest(msgspec.Struct, tag=True):
    rid: str
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1
    grammar: GrammarSpec | None = None


class AbortRequest(msgspec.Struct, tag=True):
    rid: str


class ControlRequest(msgspec.Struct, tag=True):
    """`flush_cache` or `stats`; answered by a ControlReply with the same id."""

    req_id: str
    action: str


class RequestMeta(msgspec.Struct, tag=True):
    """Scheduler -> detokenizer: how to render a newly accepted request."""

    rid: str
    stop: list[str] = []
    skip_special_tokens: bool = True
    stop_regex: list[str] = []


class SpecCounts(msgspec.Struct, array_like=True):
    """A speculating request's draft counts so far (None in messages of plain decoding)."""

    verify_steps: int  # steps that verified drafts
    draft_tokens: int  # drafts verified
    accepted_tokens: int  # drafts kept

    def meta_info(self, completion_tokens: int) -> dict:
        """The counts under SGLang's `meta_info` names; `spec_accept_length` is, as in SGLang,
        completion tokens per verify step."""
        steps, drafts, kept = self.verify_steps, self.draft_tokens, self.accepted_tokens
        return {"spec_verify_ct": steps, "spec_draft_token_num": drafts, "spec_accept_token_num": kept,
                "spec_accept_rate": kept / drafts if drafts else 0.0,
                "spec_accept_length": completion_tokens / steps if steps else 0.0}


class TokenOut(msgspec.Struct):
    rid: str
    token: int | None
    logprob: float | None
    top_logprobs: list[tuple[int, float]]
    finish: dict | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    input_logprobs: list[float | None] = []
    input_top_logprobs: list[list[tuple[int, float]]] = []
    spec: SpecCounts | None = None


class TokenBatch(msgspec.Struct, tag=True):
    items: list[TokenOut]


class ControlReply(msgspec.Struct, tag=True):
    req_id: str
    ok: bool
    data: dict = {}


class ErrorOut(msgspec.Struct, tag=True):
    rid: str
    message: str


class TextOut(msgspec.Struct, tag=True):
    """Detokenizer -> engine: what one request produced since the last message."""

    rid: str
    text: str
    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]]
    finish: dict | None
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    input_logprobs: list[float | None] = []
    input_top_logprobs: list[list[tuple[int, float]]] = []
    spec: SpecCounts | None = None


class TextBatch(msgspec.Struct, tag=True):
    """Detokenizer -> engine: every request's TextOut of one scheduler step, in one message."""

    items: list[TextOut]


ToScheduler = GenerateRequest | AbortRequest | ControlRequest
ToDetokenizer = TokenBatch | RequestMeta | ControlReply | ErrorOut
ToEngine = TextBatch | TextOut | ControlReply | ErrorOut

_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


scheduler_decoder = msgspec.msgpack.Decoder(ToScheduler)
detokenizer_decoder = msgspec.msgpack.Decoder(ToDetokenizer)
engine_decoder = msgspec.msgpack.Decoder(ToEngine)
