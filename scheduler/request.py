"""A request as the scheduler tracks it: tokens, cache pages, sampling state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .radix_cache import Node
from .sampling_params import SamplingParams


class TokenConstraint(Protocol):
    """What the scheduler needs from a grammar (see `scheduler.grammar.GrammarState`)."""

    def allowed(self) -> torch.Tensor | None: ...

    def accept(self, token: int) -> None: ...


@dataclass
class FinishReason:
    kind: str  # "stop" | "length" | "abort"
    matched: int | str | None = None  # the stop token id or stop string
    message: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"type": self.kind}
        if self.matched is not None:
            out["matched"] = self.matched
        if self.message:
            out["message"] = self.message
        return out


@dataclass(eq=False)
class Request:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1  # >= 0: report prompt-token logprobs from this position on
    constraint: TokenConstraint | None = None
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    input_logprobs: list[float | None] = field(default_factory=list)
    input_top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: FinishReason | None = None
    # cache state
    slot: int | None = None
    pages: list[int] = field(default_factory=list)
    swa_pages: list[int | None] = field(default_factory=list)
    owned_pages: set[int] = field(default_factory=set)
    owned_swa_pages: set[int] = field(default_factory=set)
    swa_dropped: int = 0  # leading pages whose sliding-window KV this request no longer references
    computed: int = 0  # tokens whose state is in the cache
    cached_tokens: int = 0  # tokens reused from the prefix cache at (the last) admission
    inserted_pages: int = 0  # leading pages that are nodes of the radix tree
    last_node: Node | None = None
    restore_page: int | None = None  # resume its compressor state from this page's snapshot on the next run
    generator: torch.Generator | None = None
    retractions: int = 0
    # speculative decoding
    drafts: list[int] = field(default_factory=list)  # proposed to follow the last token
    draft_probs: torch.Tensor | None = None  # [len(drafts), V]; None: greedy drafts
    spec_verify_steps: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0

    @property
    def seq(self) -> list[int]:
        """Every token so far (a copy: O(length); per-step code uses `tokens` and `num_tokens`)."""
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def tokens(self, start: int, stop: int) -> list[int]:
        """`seq[start:stop]` (0 <= start <= stop) without building `seq`: O(stop - start)."""
        p = len(self.prompt_ids)
        if stop <= p:
            return self.prompt_ids[start:stop]
        if start >= p:
            return self.output_ids[start - p:stop - p]
        return self.prompt_ids[start:] + self.output_ids[:stop - p]

    @property
    def pending(self) -> int:
        """Tokens not yet run through the model."""
        return len(self.prompt_ids) + len(self.output_ids) - self.computed

    @property
    def wants_input_logprobs(self) -> bool:
        return self.logprob_start_len >= 0

    @property
    def finished(self) -> bool:
        return self.finish is not None
