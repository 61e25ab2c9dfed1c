"""Backends for the frontend tests: a scripted fake (interpreter semantics, no model), one engine
per session (`LocalEngine`), and a live `banyan serve` for the HTTP backends."""

from __future__ import annotations

import pytest

import banyan.frontend as sgl
from banyan.tests.runtime.server.conftest import API_KEY, start_server

from .fakes import FakeBackend


@pytest.fixture(autouse=True)
def no_default_backend():
    """Every test sets the backend it means to use."""
    sgl.set_default_backend(None)
    yield
    sgl.set_default_backend(None)


@pytest.fixture
def fake() -> FakeBackend:
    backend = FakeBackend()
    sgl.set_default_backend(backend)
    return backend


@pytest.fixture(scope="session")
def engine(tiny_official):
    from banyan.runtime.engine import Engine

    with Engine(tiny_official, max_running_requests=8, kv_cache_bytes=48 << 20) as running:
        yield running


@pytest.fixture
def local(engine) -> sgl.LocalEngine:
    backend = sgl.LocalEngine(engine=engine)
    sgl.set_default_backend(backend)
    return backend


@pytest.fixture(scope="session")
def server(tiny_official, tmp_path_factory):
    """A live server (requires `Authorization: Bearer API_KEY`)."""
    # Room for a program's forks and a batch's threads at once (the later flags win).
    live = start_server(tiny_official, tmp_path_factory.mktemp("frontend-server") / "server.log",
                        "--max-running-requests", "8", "--max-queued-requests", "64")
    yield live
    live.stop()


@pytest.fixture
def endpoint(server) -> sgl.RuntimeEndpoint:
    backend = sgl.RuntimeEndpoint(server.url, api_key=API_KEY)
    sgl.set_default_backend(backend)
    yield backend
    backend.shutdown()


@pytest.fixture
def openai_backend(server) -> sgl.OpenAI:
    backend = sgl.OpenAI(server.url + "/v1", api_key=API_KEY)
    sgl.set_default_backend(backend)
    yield backend
    backend.shutdown()
