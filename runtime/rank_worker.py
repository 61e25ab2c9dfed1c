"""The ranks of a tensor/expert-parallel engine, and the runner of a data-parallel attention rank.

Every rank holds its shard of the model and a `ModelRunner` over identically shaped pools.
Only rank 0 runs the scheduler: its `LeaderRunner` broadcasts each step's `RunRequest` list
(without the sampling rows: only rank 0 samples) over the world communicator before running
it, and every other rank runs the same step from that message (`follow`), so the collectives
inside the forward pass line up. Page ids chosen by rank 0 are valid everywhere because the
pools have the same shape on every rank (rank 0 sends the shape once, at start-up).

A rank that dies breaks its peers' next collective (gloo and NCCL see the closed connection),
and the process that spawned it sees it exit: `Engine` on node 0 fails and the server exits;
`serve_headless` on another node logs which rank stopped and exits non-zero.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from dataclasses import replace
from multiprocessing.connection import wait

import torch

from ..model import threads
from ..model.kv_cache import CacheShape
from ..model.loader import load_model
from ..model.network import DeepseekV4
from ..model.parallel import SINGLE, Communicator, Parallel, init_parallel
from ..model.runner import ModelRunner, RunOutput, RunRequest
from .options import EngineOptions

log = logging.getLogger("banyan.rank")

# A follower waits in a broadcast for as long as the server is idle, so the group's timeout is
# no liveness check: a dead rank is seen through its closed connections, a stuck step by
# rank 0's watchdog (which ends rank 0, and so every follower's wait).
IDLE_TIMEOUT_S = 30 * 24 * 3600.0


def join(opts: EngineOptions, rank: int) -> Parallel:
    """This rank's place in the layout; joins the process group when there is more than one rank."""
    if opts.world_size == 1:
        return SINGLE
    return init_parallel(opts.parallel_config(rank), f"tcp://{opts.dist_init_addr}", rank_device(opts, rank),
                         timeout_s=IDLE_TIMEOUT_S)


def rank_device(opts: EngineOptions, rank: int) -> str:
    """`cuda` means one GPU per local rank (`cuda:<local index>`); other devices are used as given."""
    if opts.device != "cuda" or opts.world_size == 1:
        return opts.device
    return f"cuda:{rank - opts.local_ranks.start}"


def load_shard(opts: EngineOptions, parallel: Parallel, device: str, mtp: str = "no") -> DeepseekV4:
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    model = load_model(opts.model_path, dtype=getattr(torch, opts.dtype), device=device, progress=False,
                       weight_format=opts.resolved_weight_format(), mtp=mtp, parallel=parallel)
    if torch.device(device).type == "cpu":
        threads.configure(model.cfg.hidden_size, opts.cpu_threads)  # the runner sets each step's count
    return model


class LeaderRunner(ModelRunner):
    """Rank 0's runner: sends every step to the other ranks, then runs it."""

    def __init__(self, model: DeepseekV4, shape: CacheShape, comm: Communicator, kv_cache_dtype: str = "auto"
                 ) -> None:
        super().__init__(model, shape, kv_cache_dtype=kv_cache_dtype)
        self.comm = comm
        comm.broadcast_object(shape)

    def run(self, requests: list[RunRequest]) -> list[RunOutput]:
        self.comm.broadcast_object([replace(r, sampling=None) for r in requests])
        return super().run(requests)


def follow(model: DeepseekV4, comm: Communicator, kv_cache_dtype: str = "auto") -> None:
    """Run every step rank 0 broadcasts, until it sends None."""
    runner = ModelRunner(model, comm.broadcast_object(None), kv_cache_dtype=kv_cache_dtype)
    while (requests := comm.broadcast_object(None)) is not None:
        runner.run(requests)


def run_rank_worker(opts: EngineOptions, rank: int) -> None:
    """A rank other than 0: load its shard and follow rank 0's steps."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    device = rank_device(opts, rank)
    parallel = join(opts, rank)
    model = load_shard(opts, parallel, device)
    log.info("rank %d of %d: shard loaded on %s", rank, opts.world_size, device)
    try:
        follow(model, parallel.world_comm, opts.kv_cache_dtype)
    except Exception as exc:  # a peer died or the group broke: exit, so that the supervisor sees it
        log.error("rank %d stopped: %s: %s", rank, type(exc).__name__, exc)
        raise SystemExit(1) from None


def serve_headless(opts: EngineOptions) -> int:
    """A node other than 0: run its ranks until one of them exits, then stop the others."""
    from .engine import _child_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_child_main, args=(run_rank_worker, opts, rank), daemon=True,
                           name=f"banyan-rank-{rank}") for rank in opts.local_ranks]
    for p in procs:
        p.start()
    log.info("node %d of %d: ranks %d-%d joining rank 0 at %s", opts.node_rank, opts.nnodes, opts.local_ranks[0],
             opts.local_ranks[-1], opts.dist_init_addr)
    signal.signal(signal.SIGTERM, lambda *_: _stop_and_exit(procs))
    wait([p.sentinel for p in procs])
    first = next(p for p in procs if not p.is_alive())
    first.join()
    if first.exitcode:
        log.error("%s (pid %d) exited with code %s; stopping node %d", first.name, first.pid, first.exitcode,
                  opts.node_rank)
    _stop(procs)
    return 1 if first.exitcode else 0


def _stop_and_exit(procs: list[mp.Process]) -> None:
    _stop(procs)
    raise SystemExit(0)


def _stop(procs: list[mp.Process]) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=5)


class DataParallelRunner(ModelRunner):
    """The runner of a data-parallel attention rank (its own scheduler, pools and batch; the
    MoE spans every rank). Each loop iteration the ranks agree whether any of them has work
    (`any_busy`: one all-reduce); if so all step, and a rank whose scheduler ran no forward
    joins the step's MoE collectives with no tokens (`end_step`)."""

    def __init__(self, model: DeepseekV4, shape: CacheShape, comm: Communicator, kv_cache_dtype: str = "auto"
                 ) -> None:
        super().__init__(model, shape, kv_cache_dtype=kv_cache_dtype)
        self.comm, self._ran = comm, False

    def run(self, requests: list[RunRequest]) -> list[RunOutput]:
        self._ran = True
        return super().run(requests)

    def any_busy(self, busy: bool) -> bool:
        return bool(self.comm.all_reduce(torch.tensor([int(busy)], device=self.model.device)).item())

    def end_step(self) -> None:
        if not self._ran:
            self.model.idle_forward()
        self._ran = False
