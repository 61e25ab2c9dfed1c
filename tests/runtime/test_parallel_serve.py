"""`banyan serve` over two ranks on CPU (gloo): `--tp 2` answers the openai client with the same
greedy text as `--tp 1`, a dead rank takes the server down, and two "nodes" on localhost
(`--nnodes 2 --node-rank 0/1 --dist-init-addr`) serve the same text."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import openai
import pytest

from banyan.runtime.cli import build_parser
from banyan.runtime.options import EngineOptions
from banyan.tests.runtime.server.conftest import API_KEY, free_port, start_server

PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away,"]
EXIT_WITHIN_S = 30


def test_parallel_flags_and_their_checks():
    args = build_parser().parse_args(["serve", "--tensor-parallel-size", "2", "--ep", "2", "--nnodes", "2",
                                      "--node-rank", "1", "--dist-init-addr", "10.0.0.1:5000"])
    assert (args.tp_size, args.ep_size, args.nnodes, args.node_rank, args.dist_init_addr) == \
        (2, 2, 2, 1, "10.0.0.1:5000")
    opts = EngineOptions(tp_size=4, nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:5000")
    opts.validate()
    assert (opts.world_size, list(opts.local_ranks)) == (4, [2, 3])
    for bad, match in [({"tp_size": 2, "nnodes": 2}, "needs dist_init_addr"),
                       ({"tp_size": 3, "nnodes": 2, "dist_init_addr": "h:1"}, "do not spread evenly"),
                       ({"tp_size": 2, "dist_init_addr": "nohost"}, "HOST:PORT"),
                       ({"tp_size": 4, "ep_size": 2}, "ep must be 1 or the world size 4"),
                       ({"dp_size": 2, "ep_size": 2, "nnodes": 2, "dist_init_addr": "h:1"}, "one node"),
                       ({"dp_size": 2, "tp_size": 2, "ep_size": 4}, "tensor parallelism inside a group"),
                       ({"tp_size": 2, "speculative_algorithm": "mtp"}, "speculative decoding is not supported")]:
        with pytest.raises(ValueError, match=match):
            EngineOptions(**bad).validate()


def _answers(server) -> list[str]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    out = client.completions.create(model="banyan-tiny", prompt=PROMPTS, max_tokens=12, temperature=0)
    return [c.text for c in sorted(out.choices, key=lambda c: c.index)]


def _start_both(tiny_official, tmp_path, *extra: str):
    """A `--tp 1` server and one started with `extra`, loading at the same time."""
    started: dict[str, object] = {}

    def start(name: str, *flags: str) -> None:
        try:
            started[name] = start_server(tiny_official, tmp_path / f"{name}.log", *flags)
        except Exception as exc:  # surfaced below, in the test's thread
            started[name] = exc

    other = threading.Thread(target=start, args=("parallel", *extra))
    other.start()
    start("single")
    other.join()
    servers = [started["single"], started["parallel"]]
    for s in servers:
        if isinstance(s, Exception):
            for t in servers:
                if not isinstance(t, Exception):
                    t.stop()
            raise s
    return servers


def _wait_exit(proc: subprocess.Popen, within: float) -> float:
    start = time.time()
    proc.wait(timeout=within)
    return time.time() - start


def test_tp2_serves_the_tp1_text_and_a_dead_rank_ends_it(tiny_official, tmp_path):
    single, tp2 = _start_both(tiny_official, tmp_path, "--tp", "2")
    try:
        assert _answers(tp2) == _answers(single)
        with tp2.http() as http:
            info = http.get("/server_info").json()
        assert (info["tp_size"], info["ep_size"], info["dp_size"]) == (2, 1, 1)
        rank1 = info["processes"]["banyan-rank-1"]
        os.kill(rank1, signal.SIGKILL)
        assert _wait_exit(tp2.proc, EXIT_WITHIN_S) < EXIT_WITHIN_S
    finally:
        single.stop()
        tp2.stop()
    assert tp2.proc.returncode == 1
    assert f"engine process banyan-rank-1 (pid {rank1}) exited with code -9" in tp2.log()


def test_dp2_ep2_serves_the_tp1_text_with_a_cache_per_rank(tiny_official, tmp_path):
    """Data-parallel attention over two ranks (EP2 MoE): each rank's scheduler serves the
    requests routed to it by their first page, the answers equal `--tp 1`'s, repeats hit the
    prefix caches with the same text, and a flush leaves every rank's pools whole."""
    long_prompts = [f"{i} " + "the cat sat on the mat " * 60 for i in range(4)]  # > one 128-token page each
    single, dp2 = _start_both(tiny_official, tmp_path, "--dp", "2", "--ep", "2")
    try:
        clients = [openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
                   for s in (single, dp2)]

        def texts(client) -> list[str]:
            out = client.completions.create(model="banyan-tiny", prompt=long_prompts, max_tokens=8, temperature=0)
            return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

        first = texts(clients[1])
        assert first == texts(clients[0]) and texts(clients[1]) == first
        with dp2.http() as http:
            info = http.get("/server_info").json()
            assert info["dp_size"] == 2 and "banyan-scheduler-1" in info["processes"]
            assert info["internal_states"][0]["cache_hit_tokens"] > 0
            assert http.post("/flush_cache").status_code == 200
            stats = http.get("/server_info").json()["internal_states"][0]
        assert stats["pages_free"] == stats["pages_total"] and stats["swa_pages_free"] == stats["swa_pages_total"]
        assert stats["slots_free"] == stats["slots_total"]
    finally:
        single.stop()
        dp2.stop()


@pytest.mark.slow
def test_two_nodes_on_localhost_serve_the_tp1_text(tiny_official, tmp_path):
    """Node 1 runs its rank headless; when it dies, node 0's next step fails and the server exits."""
    addr = f"127.0.0.1:{free_port()}"
    dist = ["--tp", "2", "--nnodes", "2", "--dist-init-addr", addr]
    log1 = open(tmp_path / "node1.log", "w")
    node1 = subprocess.Popen([sys.executable, "-m", "banyan.runtime.cli", "serve", str(tiny_official), *dist,
                              "--node-rank", "1"], stdout=log1, stderr=subprocess.STDOUT)
    try:
        single, node0 = _start_both(tiny_official, tmp_path, *dist, "--node-rank", "0")
        try:
            assert _answers(node0) == _answers(single)
            node1.send_signal(signal.SIGKILL)
            node1.wait(timeout=10)
            with pytest.raises(openai.APIError):
                _answers(node0)
            assert _wait_exit(node0.proc, EXIT_WITHIN_S) < EXIT_WITHIN_S
        finally:
            single.stop()
            node0.stop()
    finally:
        if node1.poll() is None:
            node1.kill()
    assert node0.proc.returncode == 1
    assert "ranks 1-1 joining rank 0 at " + addr in (tmp_path / "node1.log").read_text()
