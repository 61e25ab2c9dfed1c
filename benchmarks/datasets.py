"""Benchmark datasets as lists of sessions: random, shared-prefix, multi-turn and JSONL.

Prompts are token ids (exact lengths; for `/v1/completions` and `/generate`) or random
words (about one token each in the V4 vocabulary; for every backend, chat included).
Everything is drawn from a seeded generator, so a seed always gives the same dataset.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .workloads import BenchRequest, Content, Conversation, Session, SingleTurn

TOKEN_ID_RANGE = (3, 128000)  # ordinary vocabulary, no special tokens
PROMPT_KINDS = ("words", "ids")
DATASETS = ("random", "shared-prefix", "multi-turn", "jsonl")


@dataclass(frozen=True)
class LenRange:
    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str) -> "LenRange":
        """`"128"` or `"64:512"` (inclusive)."""
        lo, _, hi = str(text).partition(":")
        out = cls(int(lo), int(hi or lo))
        if not 0 < out.lo <= out.hi:
            raise argparse.ArgumentTypeError(f"length range {text!r} must be N or LO:HI with 0 < LO <= HI")
        return out

    def __str__(self) -> str:
        return f"{self.lo}:{self.hi}"

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.lo, self.hi + 1))


@lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """Lower-case ASCII words that are single tokens (with their leading space) in the V4 vocabulary."""
    from ..runtime.tokenizer import load_tokenizer

    vocab = load_tokenizer().get_vocab()
    return tuple(sorted(w[1:] for w in vocab
                        if w.startswith("Ġ") and 3 <= len(w) - 1 <= 10 and w[1:].isascii()
                        and w[1:].isalpha() and w[1:].islower()))


def make_prompt(n: int, kind: str, rng: np.random.Generator) -> Content:
    """`n` random token ids, or `n` random words."""
    if kind == "ids":
        return rng.integers(*TOKEN_ID_RANGE, size=n).tolist()
    if kind == "words":
        pool = word_pool()
        return " ".join(pool[i] for i in rng.integers(0, len(pool), size=n))
    raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")


def _user(content: Content) -> dict:
    return {"role": "user", "content": content}


def random_dataset(num: int, input_len: LenRange, output_len: LenRange, kind: str = "words",
                   seed: int = 0) -> list[SingleTurn]:
    rng = np.random.default_rng(seed)
    return [SingleTurn(BenchRequest([_user(make_prompt(input_len.sample(rng), kind, rng))], output_len.sample(rng)))
            for _ in range(num)]


def shared_prefix_dataset(num: int, groups: int, prefix_len: int, question_len: LenRange, output_len: LenRange,
                          kind: str = "words", seed: int = 0) -> list[SingleTurn]:
    """Request i asks its own question after the system prompt of group `i % groups`, so
    consecutive requests interleave the groups."""
    rng = np.random.default_rng(seed)
    prefixes = [make_prompt(prefix_len, kind, rng) for _ in range(groups)]
    return [SingleTurn(BenchRequest([{"role": "system", "content": prefixes[i % groups]},
                                     _user(make_prompt(question_len.sample(rng), kind, rng))],
                                    output_len.sample(rng)))
            for i in range(num)]


def multi_turn_dataset(num: int, turns: int, turn_len: LenRange, output_len: LenRange,
                       seed: int = 0) -> list[Conversation]:
    """Word conversations (answers come back as text, so the history is text)."""
    rng = np.random.default_rng(seed)
    return [Conversation([make_prompt(turn_len.sample(rng), "words", rng) for _ in range(turns)],
                         output_len.sample(rng))
            for _ in range(num)]


def jsonl_dataset(path: str | Path, output_len: LenRange, seed: int = 0) -> list[Session]:
    """One JSON object a line: `prompt` (text or token ids), `messages`, or `turns` (user
    texts of a conversation); optional `max_tokens`, else drawn from `output_len`."""
    rng = np.random.default_rng(seed)
    sessions: list[Session] = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        max_tokens = int(row.get("max_tokens") or output_len.sample(rng))
        if "turns" in row:
            sessions.append(Conversation(list(row["turns"]), max_tokens, row.get("system")))
        elif "messages" in row:
            sessions.append(SingleTurn(BenchRequest(list(row["messages"]), max_tokens)))
        elif "prompt" in row:
            sessions.append(SingleTurn(BenchRequest([_user(row["prompt"])], max_tokens)))
        else:
            raise ValueError(f"{path}:{lineno}: expected a 'prompt', 'messages' or 'turns' field")
    return sessions


def warmup_dataset(num: int, seed: int = 1) -> list[SingleTurn]:
    """Short word prompts unrelated to any dataset, so warming up does not fill the prefix cache."""
    return random_dataset(num, LenRange(16, 16), LenRange(4, 4), "words", seed)


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, default="random")
    p.add_argument("--num-prompts", type=int, default=64, help="sessions: prompts, or conversations for multi-turn")
    p.add_argument("--prompt-kind", choices=PROMPT_KINDS, default="words",
                   help="random word text (any backend) or token ids (completions and banyan backends)")
    p.add_argument("--input-len", type=LenRange.parse, default=LenRange(64, 512),
                   help="prompt tokens, N or LO:HI (random); question tokens (shared-prefix); turn tokens (multi-turn)")
    p.add_argument("--output-len", type=LenRange.parse, default=LenRange(16, 64), help="max new tokens, N or LO:HI")
    p.add_argument("--groups", type=int, default=4, help="shared-prefix: number of distinct system prompts")
    p.add_argument("--prefix-len", type=int, default=1024, help="shared-prefix: system prompt tokens")
    p.add_argument("--turns", type=int, default=4, help="multi-turn: user turns per conversation")
    p.add_argument("--dataset-path", default=None, help="jsonl: the prompts file")
    p.add_argument("--seed", type=int, default=0)


def dataset_from_args(args: argparse.Namespace) -> list[Session]:
    if args.dataset == "random":
        return random_dataset(args.num_prompts, args.input_len, args.output_len, args.prompt_kind, args.seed)
    if args.dataset == "shared-prefix":
        return shared_prefix_dataset(args.num_prompts, args.groups, args.prefix_len, args.input_len, args.output_len,
                                     args.prompt_kind, args.seed)
    if args.dataset == "multi-turn":
        return multi_turn_dataset(args.num_prompts, args.turns, args.input_len, args.output_len, args.seed)
    if not args.dataset_path:
        raise SystemExit("--dataset jsonl needs --dataset-path")
    return jsonl_dataset(args.dataset_path, args.output_len, args.seed)[:args.num_prompts]
