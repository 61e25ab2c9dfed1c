"""Incremental detokenization against a full decode with the reference stop logic, for every
prefix of random token streams; the work per step stays bounded."""

from __future__ import annotations

import random
import re

import pytest

from banyan.runtime.detokenizer_process import (MAX_WINDOW_TOKENS, REPLACEMENT, Detokenizer, IncrementalDecoder,
                                                StopMatcher, fast_decode, regex_width)
from banyan.runtime.protocol import RequestMeta, TextBatch, TokenBatch, TokenOut
from banyan.runtime.tokenizer import SPECIAL_IDS, load_tokenizer

MULTILINGUAL = "héllo wörld 😀🎉 中文字符 日本語のテキスト 한국어 ünïcödé ✓ 42 stop here. ok!"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def pool(tok) -> list[int]:
    """Tokens of multilingual text (emoji and CJK split into byte fragments), random vocabulary
    tokens and special tokens."""
    rng = random.Random(0)
    return (tok.encode(MULTILINGUAL, add_special_tokens=False) + [rng.randrange(3, 128000) for _ in range(40)]
            + [SPECIAL_IDS[k] for k in ("bos", "eos", "think", "end_think", "user")])


def reference(text: str, finished: bool, stop: list[str], stop_regex: list[str]) -> str:
    """What may be sent of a full decode: a trailing U+FFFD held while unfinished, the text cut
    at the first stop string or regex match, else a tail that could become a stop string held."""
    if not finished and text.endswith(REPLACEMENT):
        text = text[:-1]
    cuts = [i for s in stop if (i := text.find(s)) != -1]
    cuts += [m.start() for p in stop_regex if (m := re.search(p, text))]
    if cuts:
        return text[:min(cuts)]
    if not finished:
        for k in range(min(max(map(len, stop), default=0) - 1, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in stop):
                return text[:-k]
    return text


def expected_stream(tok, ids: list[int], skip: bool, stop: list[str], stop_regex: list[str]) -> list[str]:
    """The text sent so far after each token; text already sent stays sent (a regex match may
    begin inside it)."""
    sent, out = "", []
    for k in range(1, len(ids) + 1):
        ref = reference(tok.decode(ids[:k], skip_special_tokens=skip), k == len(ids), stop, stop_regex)
        assert ref.startswith(sent) or sent.startswith(ref)
        sent = ref if len(ref) > len(sent) else sent
        out.append(sent)
    return out


def run_stream(tok, ids: list[int], skip: bool, stop: list[str], stop_regex: list[str]) -> list[str]:
    detok = Detokenizer(fast_decode(tok))  # what the process uses; the reference is tok.decode
    detok.register(RequestMeta("r", stop, skip, stop_regex))
    sent, out = "", []
    for k, token in enumerate(ids):
        finish = {"type": "length"} if k == len(ids) - 1 else None
        sent += detok.step(TokenOut("r", token, None, [], finish, 3, 0, k + 1)).text
        out.append(sent)
    assert not detok.states  # a finished request's state is dropped
    return out


def random_stops(rng: random.Random, text: str) -> list[str]:
    """Stop strings taken from the stream's own text (so that they span tokens), and one absent."""
    stops = ["\x00never"]
    for _ in range(rng.randrange(0, 3)):
        if len(text) > 2:
            i = rng.randrange(len(text) - 1)
            stops.append(text[i:i + rng.randrange(2, 7)])
    return stops


@pytest.mark.parametrize("skip", [True, False])
def test_random_streams_match_full_decode_at_every_prefix(tok, pool, skip):
    rng = random.Random(1 if skip else 2)
    patterns = [[], [r"\d\d"], [r"[😀🎉]"], [r"ok!"]]
    for trial in range(120):
        ids = [rng.choice(pool) for _ in range(rng.randrange(1, 50))]
        stop = random_stops(rng, tok.decode(ids, skip_special_tokens=skip)) if trial % 3 else []
        stop_regex = patterns[trial % len(patterns)]
        got = run_stream(tok, ids, skip, stop, stop_regex)
        assert got == expected_stream(tok, ids, skip, stop, stop_regex), (ids, stop, stop_regex)


def test_emoji_split_across_tokens_is_held_until_whole(tok):
    ids = tok.encode("a😀b", add_special_tokens=False)
    dec = IncrementalDecoder(tok.decode)
    pieces = [dec.push([t]) for t in ids]
    assert "".join(pieces) == "a😀b"
    assert all(REPLACEMENT not in p for p in pieces) and "😀" in pieces  # sent whole, never half


def test_stop_string_spanning_tokens_is_cut_and_held(tok):
    ids = tok.encode("one two three four", add_special_tokens=False)
    got = run_stream(tok, ids, True, ["ee fo"], [])
    assert got[-1] == "one two thr"
    # " thr" + "ee" could still become the stop string: nothing after "two" is sent until it does
    assert got == expected_stream(tok, ids, True, ["ee fo"], [])


def test_special_tokens_skipped_or_kept(tok):
    ids = tok.encode("hi", add_special_tokens=False) + [SPECIAL_IDS["eos"]]
    assert run_stream(tok, ids, True, [], [])[-1] == "hi"
    assert run_stream(tok, ids, False, [], [])[-1] == "hi<｜end▁of▁sentence｜>"


def test_work_per_step_is_bounded(tok):
    """A long output: each step decodes a few tokens and searches a bounded tail."""
    ids = tok.encode(MULTILINGUAL * 60, add_special_tokens=False)
    assert len(ids) > 1500
    sizes: list[int] = []

    def counting_decode(window, **kw):
        sizes.append(len(window))
        return tok.decode(window, **kw)

    dec = IncrementalDecoder(counting_decode)
    matcher = StopMatcher(["stop here!", "never"], [r"\d{3}", r"x.*y"], regex_max_len=64)
    text, longest_fresh = "", 0
    for t in ids:
        fresh = dec.push([t])
        longest_fresh = max(longest_fresh, len(fresh))
        text += matcher.feed(fresh)
        assert len(matcher.tail) <= matcher.history + longest_fresh
    assert len(sizes) == len(ids) and max(sizes) <= 6  # the window: the last step's tokens and the new one
    assert text == reference(tok.decode(ids), False, ["stop here!", "never"], [])


def test_garbage_window_is_capped(tok):
    """Lone UTF-8 continuation bytes never end on a whole character: the window still moves on."""
    byte_token = tok.convert_tokens_to_ids("Ģ")  # byte 0x80 in the byte-level alphabet
    assert tok.decode([byte_token] * 3) == REPLACEMENT * 3
    dec = IncrementalDecoder(tok.decode)
    for _ in range(3 * MAX_WINDOW_TOKENS):
        dec.push([byte_token])
        assert dec.window <= MAX_WINDOW_TOKENS + 1
    assert dec.push([], final=True).count(REPLACEMENT) >= 1


def test_stop_regex_width_bound():
    assert regex_width(r"\d{2}", 100) == 2 and regex_width(r"ab|cde", 100) == 3
    assert regex_width(r"a.*b", 100) == 100
    # an unbounded pattern is found within the last `regex_max_len` characters only
    for gap, found in ((5, True), (40, False)):
        m = StopMatcher([], [r"a.*b"], regex_max_len=16)
        sent = m.feed("a") + m.feed("-" * gap) + m.feed("b") + m.feed("z", final=True)
        assert m.stopped == found
        assert sent == "a" + "-" * gap + ("" if found else "bz")  # no hold-back for regexes


def test_anchored_regex_only_matches_at_the_real_start():
    m = StopMatcher([], [r"^xy"], regex_max_len=8)
    assert m.feed("a" * 100) + m.feed("xy") + m.feed("", final=True) == "a" * 100 + "xy" and not m.stopped
    m = StopMatcher([], [r"^xy"])
    assert m.feed("x") + m.feed("y") == "x" and m.stopped


def test_one_message_per_step_for_every_request(tok):
    detok = Detokenizer(tok.decode)
    a, b = tok.encode("alpha beta", add_special_tokens=False), tok.encode("gamma", add_special_tokens=False)
    detok.register(RequestMeta("a", [" beta"]))
    detok.register(RequestMeta("b"))
    out = detok.step_batch(TokenBatch([TokenOut("a", a[0], -0.5, [(a[0], -0.5)], None, 4, 0, 1),
                                       TokenOut("b", b[0], -0.1, [], {"type": "length"}, 2, 0, 1)]))
    assert isinstance(out, TextBatch) and [o.rid for o in out.items] == ["a", "b"]
    assert out.items[0].token_ids == [a[0]] and out.items[0].logprobs == [-0.5]
    assert out.items[1].text == tok.decode(b[:1]) and out.items[1].finish == {"type": "length"}
    assert set(detok.states) == {"a"}


@pytest.mark.parametrize("text, stop, held", [("zabxaba", "abab", 3), ("qaZa", "aXaY", 1), ("qaXa", "aXaY", 3),
                                              ("abc", "xyz", 0)])
def test_held_tail_is_the_longest_stop_prefix(text, stop, held):
    m = StopMatcher([stop], [])
    assert m.feed(text) == text[:len(text) - held]
    assert m.feed("", final=True) == text[len(text) - held:]
