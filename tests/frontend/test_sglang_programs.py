"""SGLang's own frontend test programs (`sglang_programs.py`), unchanged but for the import, on a
live Banyan server through `RuntimeEndpoint`; checked for structure, not answer quality."""

from __future__ import annotations

import re

from . import sglang_programs as programs


def test_few_shot_qa_single_and_batch(endpoint):
    ret, rets = programs.few_shot_qa_program()
    assert "\n" not in ret["answer"] and ret.text().endswith("A:" + ret["answer"])
    assert len(rets) == 3 and all(r.text().endswith("A:" + r["answer"]) for r in rets)
    assert ret.get_meta_info("answer")["finish_reason"]["type"] in ("stop", "length")


def test_mt_bench_role_blocks(endpoint):
    ret = programs.mt_bench_program()
    messages = ret.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == ret["answer_1"] and messages[4]["content"] == ret["answer_2"]
    assert ret.get_meta_info("answer_2")["completion_tokens"] <= 64


def test_select_scores_every_choice(endpoint):
    ret = programs.select_program()
    meta = ret.get_meta_info("answer")
    scores = meta["normalized_prompt_logprobs"]
    assert len(scores) == 3 and all(s < 0 for s in scores)
    assert ret["answer"] == ["True", "False", "Unknown"][scores.index(max(scores))]
    assert ret.text().endswith("Answer:" + ret["answer"])


def test_decode_int(endpoint):
    ret = programs.decode_int_program()
    assert re.fullmatch(r"[-+]?[0-9]+", ret["hours"].strip()) and re.fullmatch(r"[-+]?[0-9]+", ret["days"].strip())
    int(ret["hours"]), int(ret["days"])


def test_parallel_decoding_forks(endpoint):
    ret = programs.parallel_decoding_program()
    assert isinstance(ret["summary"], str)
    for i in range(1, 6):
        assert f"\nTip {i}:" in ret.text()


def test_regex(endpoint):
    state, regex = programs.regex_program()
    assert re.fullmatch(regex, state["answer"])


def test_stream(endpoint):
    ret, out, ret2, out2 = programs.stream_program()
    assert out == ret.text() and out2 == ret2["answer"]
    assert out2 and ret2.text().endswith(out2 + "<｜end▁of▁sentence｜>") or \
        ret2.get_meta_info("answer")["finish_reason"]["type"] == "length"
