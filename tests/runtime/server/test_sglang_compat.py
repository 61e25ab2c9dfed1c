"""The exact requests SGLang's frontend (`sglang.RuntimeEndpoint`, 0.5.x) sends, and the
response fields it reads, replayed against a live server. The request bodies were captured
from the real frontend; SGLang itself cannot be installed light on CPU, so it is not a test
dependency."""

from __future__ import annotations

import json
import re

FRONTEND_SAMPLING = {  # every key the frontend sends on each `gen`
    "skip_special_tokens": True, "spaces_between_special_tokens": True, "max_new_tokens": 8,
    "min_new_tokens": 0, "n": 1, "stop": "\n", "stop_token_ids": [], "stop_regex": [], "temperature": 0,
    "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
    "ignore_eos": False, "regex": None, "json_schema": None}
PREFIX = "Q: What is the capital of France?\nA:"


def test_startup_calls(server):
    with server.http() as http:
        assert http.get("/get_model_info").json()["model_path"]
        assert http.get("/server_info").status_code == 200 and http.get("/get_server_info").status_code == 200


def test_gen_request_shape(server):
    with server.http() as http:
        r = http.post("/generate", json={"text": PREFIX, "sampling_params": FRONTEND_SAMPLING})
        assert r.status_code == 200, r.text
        out = r.json()
        assert isinstance(out["text"], str) and "\n" not in out["text"]
        assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")


def test_dtype_int_regex_with_stops(server):
    params = dict(FRONTEND_SAMPLING, regex=r"[-+]?[0-9]+[ \n]*", stop=[" ", "\n"], max_new_tokens=12)
    with server.http() as http:
        out = http.post("/generate", json={"text": PREFIX, "sampling_params": params}).json()
    assert re.fullmatch(r"[-+]?[0-9]+", out["text"]), out["text"]


def test_min_new_tokens_and_stop_regex(server):
    with server.http() as http:
        base = dict(FRONTEND_SAMPLING, stop=[], max_new_tokens=6)
        forced_eos = http.post("/generate", json={"text": PREFIX, "sampling_params": dict(
            base, min_new_tokens=4, logit_bias={"1": 100})}).json()
        assert forced_eos["meta_info"]["completion_tokens"] == 5  # 4 tokens, then the biased EOS
        full = http.post("/generate", json={"text": PREFIX, "sampling_params": base}).json()["text"]
        pattern = re.escape(full[3:5])
        cut = http.post("/generate", json={"text": PREFIX, "sampling_params": dict(base, stop_regex=[pattern])}).json()
        assert cut["meta_info"]["finish_reason"]["type"] == "stop" and full.startswith(cut["text"])
        assert not re.search(pattern, cut["text"])


def test_select_flow(server):
    choices = [" Paris", " London", " a large city"]
    with server.http() as http:
        first = http.post("/generate", json={"text": PREFIX, "sampling_params": {"max_new_tokens": 0}}).json()
        assert first["text"] == "" and first["meta_info"]["prompt_tokens"] > 2
        start = first["meta_info"]["prompt_tokens"] - 2
        outs = http.post("/generate", json={
            "text": [PREFIX + c for c in choices], "sampling_params": {"max_new_tokens": 0, "temperature": 0},
            "return_logprob": True, "return_text_in_logprobs": True, "logprob_start_len": start}).json()
    assert isinstance(outs, list) and len(outs) == len(choices)
    for out, choice in zip(outs, choices):
        meta = out["meta_info"]
        lps = meta["input_token_logprobs"]
        assert meta["output_token_logprobs"] == []
        assert lps[0][0] is None and all(x[0] < 0 for x in lps[1:])
        assert "".join(x[2] for x in lps).endswith(choice)
        assert len(lps) == meta["prompt_tokens"] - start


def test_stream_is_cumulative_sse(server):
    with server.http() as http:
        events = []
        with http.stream("POST", "/generate", json={"text": PREFIX, "stream": True,
                                                    "sampling_params": dict(FRONTEND_SAMPLING, stop=[])}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(line)
    assert events[-1] == "data: [DONE]"
    texts = [json.loads(e[5:])["text"] for e in events[:-1]]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
