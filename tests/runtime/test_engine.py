"""The Engine across its ZMQ process split, on a tiny checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import pytest

from banyan.model.generate import greedy_generate
from banyan.runtime.engine import Engine, EngineDeadError, RequestError
from banyan.scheduler.grammar import GrammarSpec
from banyan.tests.conftest import random_prompt


@pytest.fixture(scope="module")
def engine(tiny_official):
    with pytest.MonkeyPatch.context() as env:
        # one intra-op thread in the scheduler: with two, a grammar compile beside the steps makes
        # them straggle on a 2-core machine, which the decoding-goes-on check would read as a stall
        env.setenv("OMP_NUM_THREADS", "1")
        eng = Engine(tiny_official, max_running_requests=8, kv_cache_bytes=48 << 20, chunked_prefill_size=256,
                     grammar_compile_timeout=GRAMMAR_TIMEOUT)
    yield eng
    eng.shutdown()


GRAMMAR_TIMEOUT = 2.0


def string_pattern(repeat: int) -> GrammarSpec:
    """A JSON string with a bounded-repetition pattern: xgrammar's compile time grows with the square
    of `repeat` (about 1 s at 4,000 and 5 s at 9,000 on this 2-core machine)."""
    return GrammarSpec("json_schema", json.dumps({"type": "string", "pattern": f"[a-z]{{1,{repeat}}}"}))


def wait_idle(engine, timeout=10.0) -> dict:
    deadline = time.time() + timeout
    while True:
        stats = engine.stats()
        if (stats["running"] == 0 and stats["waiting"] == 0) or time.time() > deadline:
            return stats
        time.sleep(0.05)


def test_greedy_output_matches_reference_runner(engine, tiny_model):
    ids = random_prompt(300, seed=40)
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 10, "temperature": 0},
                          return_logprob=True)
    assert out["output_ids"] == greedy_generate(tiny_model, ids, 10)
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == 300 and meta["completion_tokens"] == 10
    assert meta["finish_reason"] == {"type": "length"}
    assert len(meta["output_token_logprobs"]) == 10 and all(lp <= 0 for lp in meta["output_token_logprobs"])
    assert out["text"] == engine.tokenizer.decode(out["output_ids"], skip_special_tokens=True)


def test_streaming_concatenates_to_the_full_text(engine):
    params = {"max_new_tokens": 12, "temperature": 0}
    full = engine.generate(prompt="The quick brown fox", sampling_params=params)
    chunks = list(engine.generate(prompt="The quick brown fox", sampling_params=params, stream=True))
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert [t for c in chunks for t in c["output_ids"]] == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length"}


def test_async_generate_and_shared_prefix_hits_cache(engine):
    base = random_prompt(2 * 128 + 10, seed=41)

    async def run():
        first = await engine.async_generate(input_ids=base, sampling_params={"max_new_tokens": 2, "temperature": 0})
        rest = await asyncio.gather(*[
            engine.async_generate(input_ids=base[:256] + random_prompt(5, seed=50 + i),
                                  sampling_params={"max_new_tokens": 3, "temperature": 0}) for i in range(3)])
        return first, rest

    first, rest = asyncio.run(run())
    assert first["meta_info"]["cached_tokens"] == 0
    assert [r["meta_info"]["cached_tokens"] for r in rest] == [256, 256, 256]


def test_n_samples_with_seed(engine):
    outs = engine.generate(input_ids=random_prompt(20, seed=3), sampling_params={"max_new_tokens": 5, "n": 3,
                                                                                "seed": 11})
    assert len(outs) == 3 and len({tuple(o["output_ids"]) for o in outs}) > 1
    again = engine.generate(input_ids=random_prompt(20, seed=3), sampling_params={"max_new_tokens": 5, "n": 3,
                                                                                 "seed": 11})
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in again]


def test_bad_requests_raise_clear_errors(engine):
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(input_ids=[5, 6], sampling_params={"top_p": 3})
    with pytest.raises(ValueError, match="sampling_params"):
        engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": "many"})
    with pytest.raises(RequestError, match="vocabulary"):
        engine.generate(input_ids=[10 ** 9], sampling_params={"max_new_tokens": 2})
    with pytest.raises(RequestError, match="tokens"):
        engine.generate(input_ids=[5] * 100, sampling_params={"max_new_tokens": 10 ** 7})
    with pytest.raises(ValueError, match="exactly one"):
        engine.generate(sampling_params={})
    # the engine still serves
    assert engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_abandoned_stream_is_aborted_and_pools_recover(engine):
    stream = engine.generate(input_ids=random_prompt(200, seed=44), sampling_params={"max_new_tokens": 500,
                                                                                     "ignore_eos": True},
                             stream=True)
    next(stream)
    stream.close()  # the client goes away
    stats = wait_idle(engine)
    assert stats["running"] == 0
    assert engine.flush_cache()
    stats = engine.stats()
    assert stats["pages_free"] == stats["pages_total"] and stats["slots_free"] == stats["slots_total"]
    assert stats["swa_pages_free"] == stats["swa_pages_total"]


def test_killed_scheduler_fails_pending_calls_quickly(tiny_official):
    deaths: list[str] = []
    eng = Engine(tiny_official, max_running_requests=2, kv_cache_bytes=32 << 20, on_death=deaths.append)
    try:
        stream = eng.generate(input_ids=random_prompt(50, seed=1), sampling_params={
                                                                                    "ignore_eos": True,
                                                                                    "max_new_tokens": 4000},
                              stream=True)
        next(stream)
        os.kill(eng._procs[0].pid, signal.SIGKILL)
        start = time.time()
        with pytest.raises(EngineDeadError, match="banyan-scheduler"):
            for _ in stream:
                pass
        assert time.time() - start < 5
        with pytest.raises(EngineDeadError):
            eng.generate(input_ids=[5], sampling_params={"max_new_tokens": 1})
        pid = eng.pids["banyan-scheduler"]
        assert deaths == [f"engine process banyan-scheduler (pid {pid}) exited with code -9"]
        assert eng.dead == deaths[0]
    finally:
        eng.shutdown()


def test_stop_string_truncates_text(engine):
    params = {"max_new_tokens": 12, "temperature": 0}
    ids = random_prompt(40, seed=61)
    full = engine.generate(input_ids=ids, sampling_params=params)["text"]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip()
    out = engine.generate(input_ids=ids, sampling_params={**params, "stop": [stop]})
    assert out["text"] == full[:full.index(stop)]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}


def test_request_ids_name_engine_requests_and_must_be_unique(engine):
    one = engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2}, rid="client-7")
    assert one["meta_info"]["id"] == "client-7"
    many = engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2, "n": 2}, rid="client-8")
    assert [o["meta_info"]["id"] for o in many] == ["client-8-0", "client-8-1"]
    stream = engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 50, "ignore_eos": True},
                             stream=True, rid="client-9")
    next(stream)
    with pytest.raises(RequestError, match="already in use"):
        engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2}, rid="client-9")
    stream.close()


def test_bad_token_ids_are_refused_before_they_reach_the_scheduler(engine):
    with pytest.raises(ValueError, match="integer token ids"):
        engine.generate(input_ids=[5, "six"], sampling_params={"max_new_tokens": 2})
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.generate(input_ids=[5, 2 ** 70], sampling_params={"max_new_tokens": 2})  # no 64-bit overflow
    assert engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_request_aborted_while_its_grammar_compiles_never_runs(engine):
    engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2}, grammar=GrammarSpec("regex", "[ab]+"))
    decoded = engine.stats()["decode_tokens"]

    async def give_up():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.async_generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 4},
                                                         grammar=string_pattern(4000)), 0.05)

    asyncio.run(give_up())
    time.sleep(GRAMMAR_TIMEOUT + 1)  # its compile ends (or times out) meanwhile
    stats = wait_idle(engine)
    assert stats["decode_tokens"] == decoded and stats["running"] == stats["waiting"] == 0


def test_slow_grammar_fails_at_its_deadline_while_other_requests_keep_decoding(engine):
    """Last in the module: the timed-out compile goes on in the background for a few seconds."""
    engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 2}, grammar=GrammarSpec("regex", "[ab]+"))
    stream = engine.generate(input_ids=random_prompt(30, seed=5), stream=True,
                             sampling_params={"max_new_tokens": 300, "ignore_eos": True})
    next(stream)
    arrivals: list[float] = []
    reader = threading.Thread(target=lambda: arrivals.extend(time.time() for _ in stream), daemon=True)
    reader.start()
    started = time.time()
    with pytest.raises(RequestError, match=f"did not compile within {GRAMMAR_TIMEOUT:g} s"):
        engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 4}, grammar=string_pattern(9000))
    failed = time.time()
    assert GRAMMAR_TIMEOUT <= failed - started < GRAMMAR_TIMEOUT + 3
    during = [started] + [t for t in arrivals if started <= t <= failed] + [failed]
    assert max(b - a for a, b in zip(during, during[1:])) < 1.0, "the step loop waited for the compile"
    yes_no = engine.generate(input_ids=[5, 6], sampling_params={"max_new_tokens": 8},
                             grammar=GrammarSpec("choice", json.dumps(["yes", "no"])))
    assert yes_no["text"] in ("yes", "no")
    reader.join(timeout=60)
