"""The Engine across its ZMQ process split, on a tiny checkpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from banyan.model.generate import greedy_generate
from banyan.runtime.engine import Engine, EngineDeadError, RequestError
from banyan.tests.conftest import random_prompt


@pytest.fixture(scope="module")
def engine(tiny_official):
    eng = Engine(tiny_official, max_running_requests=8, kv_cache_bytes=48 << 20, chunked_prefill_size=256)
    yield eng
    eng.shutdown()


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
    eng = Engine(tiny_official, max_running_requests=2, kv_cache_bytes=32 << 20)
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
