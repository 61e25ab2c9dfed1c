"""SGLang-native routes and the remaining OpenAI routes on a live server."""

from __future__ import annotations

import json

import pytest


def test_generate_text_and_meta_info(server):
    with server.http() as http:
        r = http.post("/generate", json={"text": "Hello there", "sampling_params": {"max_new_tokens": 6,
                                                                                    "temperature": 0}})
        assert r.status_code == 200, r.text
        out = r.json()
        meta = out["meta_info"]
        assert meta["completion_tokens"] == len(out["output_ids"]) <= 6
        assert meta["prompt_tokens"] == len(http.post("/tokenize", json={"prompt": "Hello there"}).json()["tokens"])
        assert meta["finish_reason"]["type"] in ("stop", "length") and "cached_tokens" in meta
        if meta["finish_reason"]["type"] == "length":
            assert meta["finish_reason"]["length"] == 6
        batch = http.post("/generate", json={"text": ["Hello there", "Bye"],
                                             "sampling_params": {"max_new_tokens": 6, "temperature": 0}}).json()
        assert isinstance(batch, list) and batch[0]["text"] == out["text"]


def test_generate_logprobs_prompt_and_output(server):
    with server.http() as http:
        ids = http.post("/tokenize", json={"prompt": "one two three four five"}).json()["tokens"]
        out = http.post("/generate", json={
            "input_ids": ids, "sampling_params": {"max_new_tokens": 3, "temperature": 0}, "return_logprob": True,
            "logprob_start_len": 0, "top_logprobs_num": 2, "return_text_in_logprobs": True}).json()
        meta = out["meta_info"]
        inputs = meta["input_token_logprobs"]
        assert [t[1] for t in inputs] == ids and inputs[0][0] is None and all(t[0] <= 0 for t in inputs[1:])
        assert [t[1] for t in meta["output_token_logprobs"]] == out["output_ids"]
        assert all(isinstance(t[2], str) for t in meta["output_token_logprobs"])
        assert all(len(top) == 2 for top in meta["output_top_logprobs"])
        # greedy: the chosen token is the top alternative
        assert all(top[0][1] == t[1] for top, t in zip(meta["output_top_logprobs"], meta["output_token_logprobs"]))
        # prefill only, scoring from a later position (what `select` does)
        scored = http.post("/generate", json={"input_ids": ids, "sampling_params": {"max_new_tokens": 0},
                                              "return_logprob": True, "logprob_start_len": 2}).json()
        scored_lps = scored["meta_info"]["input_token_logprobs"]
        assert scored["output_ids"] == [] and [t[1] for t in scored_lps] == ids[2:]
        assert scored_lps[0][0] is None  # SGLang's convention for the first scored token
        assert [t[0] for t in scored_lps[1:]] == pytest.approx([t[0] for t in inputs[3:]], abs=1e-4)


def test_generate_regex_and_json_schema(server):
    with server.http() as http:
        out = http.post("/generate", json={"text": "Phone:", "sampling_params": {
            "max_new_tokens": 30, "temperature": 0, "regex": r"[0-9]{3}-[0-9]{4}"}}).json()
        import re
        assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", out["text"]), out["text"]
        schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
        out = http.post("/generate", json={"text": "JSON:", "sampling_params": {
            "max_new_tokens": 30, "temperature": 0, "json_schema": json.dumps(schema)}}).json()
        assert isinstance(json.loads(out["text"])["a"], bool)
        bad = http.post("/generate", json={"text": "x", "sampling_params": {"regex": "[unclosed"}})
        assert bad.status_code == 400 and "error" in bad.json()
        bad = http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokenz": 3}})
        assert bad.status_code == 400 and "max_new_tokenz" in bad.json()["error"]["message"]


def test_generate_stream_is_cumulative(server):
    with server.http() as http:
        body = {"text": "Stream me", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        full = http.post("/generate", json=body).json()
        texts = []
        with http.stream("POST", "/generate", json=dict(body, stream=True)) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    texts.append(json.loads(line[6:])["text"])
        assert texts[-1] == full["text"] and all(texts[-1].startswith(t) for t in texts)


def test_model_info_server_info_and_flush(server):
    with server.http() as http:
        info = http.get("/get_model_info").json()
        assert info["is_generation"] and info["model_path"]
        sinfo = http.get("/server_info").json()
        assert sinfo["max_running_requests"] == 4 and "api_key" not in sinfo
        assert http.post("/flush_cache").status_code == 200
        assert http.get("/server_info").json()["internal_states"][0]["cached_pages"] == 0


def test_completions_echo_logprobs_and_models(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["banyan-tiny"]
    r = client.completions.create(model="banyan-tiny", prompt="Count: one two", max_tokens=4, temperature=0,
                                  echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text.startswith("Count: one two")
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text and lp.text_offset[1] == len(lp.tokens[0])
    batch = client.completions.create(model="banyan-tiny", prompt=["a", "b"], n=2, max_tokens=2, seed=1)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="banyan-tiny", prompt="Count: one two", max_tokens=4, temperature=0, stream=True) if c.choices)
    assert streamed == choice.text[len("Count: one two"):]


def test_tokenize_detokenize_version(server):
    with server.http() as http:
        toks = http.post("/tokenize", json={"prompt": "hello world"}).json()
        assert toks["count"] == len(toks["tokens"]) and toks["max_model_len"] > 0
        assert http.post("/detokenize", json={"tokens": toks["tokens"]}).json()["prompt"] == "hello world"
        assert http.post("/detokenize", json={"tokens": [10 ** 7]}).status_code == 400
        assert http.get("/version").json()["version"]
