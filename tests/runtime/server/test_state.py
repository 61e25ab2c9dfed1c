"""Server state without an engine process: readiness, health, the body limit, early prompt rejection."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from banyan.runtime.options import EngineOptions
from banyan.runtime.server import info
from banyan.runtime.server.errors import APIError, install_error_handlers
from banyan.runtime.server.settings import ServerSettings
from banyan.runtime.server.state import BODY_BYTES_PER_TOKEN, BODY_SLACK_BYTES, ServerState
from banyan.runtime.tokenizer import load_tokenizer

CAPACITY = 1000


class CountingTokenizer:
    """The V4 tokenizer, counting the characters it was asked to encode."""

    def __init__(self) -> None:
        self.inner = load_tokenizer(None)
        self.encoded_chars = 0

    def get_vocab(self) -> dict:
        return self.inner.get_vocab()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.encoded_chars += len(text)
        return self.inner.encode(text, add_special_tokens=add_special_tokens)


@pytest.fixture(scope="module")
def tokenizer() -> CountingTokenizer:
    return CountingTokenizer()


def make_state(tokenizer=None, **settings) -> ServerState:
    state = ServerState(ServerSettings(**settings), EngineOptions())
    state.engine = SimpleNamespace(info={"token_capacity": CAPACITY, "vocab_size": 129280}, dead=None,
                                   tokenizer=tokenizer)
    return state


def health_client(state: ServerState) -> TestClient:
    app = FastAPI()
    app.state.banyan = state
    install_error_handlers(app)
    app.include_router(info.router)
    return TestClient(app)


def test_health_follows_startup_death_and_drain():
    state = make_state()
    engine, state.engine = state.engine, None
    client = health_client(state)
    assert client.get("/health").status_code == 503 and client.get("/health").json() == {"status": "starting"}
    state.engine = engine
    assert client.get("/health").json() == {"status": "ok"}
    state.draining = True
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "the server is shutting down" and r.headers["retry-after"]
    with pytest.raises(APIError) as exc:
        state.reserve(1)
    assert exc.value.status == 503
    state.draining = False
    engine.dead = "engine process banyan-scheduler (pid 7) exited with code -9"
    r = client.get("/health")
    assert r.status_code == 503 and "banyan-scheduler (pid 7) exited with code -9" in r.json()["status"]
    tokenize = client.post("/tokenize", json={"prompt": "hi"})
    assert tokenize.status_code == 503 and "exited with code -9" in tokenize.json()["error"]["message"]


def test_body_limit_defaults_to_the_context_length():
    assert make_state().max_request_bytes == CAPACITY * BODY_BYTES_PER_TOKEN + BODY_SLACK_BYTES
    assert make_state(max_model_len=100).max_request_bytes == 100 * BODY_BYTES_PER_TOKEN + BODY_SLACK_BYTES
    assert make_state(max_request_bytes=12345).max_request_bytes == 12345


def test_provably_too_long_text_is_rejected_without_tokenizing(tokenizer):
    state = make_state(tokenizer)
    # the longest V4 token covers 128 characters: a text over 128 x max_model_len cannot fit
    with pytest.raises(APIError) as exc:
        state.tokenize("a" * (128 * CAPACITY + 1), param="messages")
    assert exc.value.status == 400 and exc.value.param == "messages"
    assert f"maximum context length is {CAPACITY} tokens" in exc.value.message
    assert tokenizer.encoded_chars == 0
    ids = state.tokenize("hello world")
    assert ids == tokenizer.inner.encode("hello world", add_special_tokens=False)
    # just under the bound it is tokenized; counting tokens is then the routes' business
    assert len(state.tokenize("-" * (128 * CAPACITY))) > 0


def test_offload_runs_off_the_event_loop_thread():
    state = make_state()

    async def run():
        return await state.offload(threading.get_ident), threading.get_ident()

    worker, loop_thread = asyncio.run(run())
    assert worker != loop_thread
    state.close()
