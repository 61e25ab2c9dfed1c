"""Run a function on several gloo ranks (spawned processes) and collect what each returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable, world: int, rendezvous: str, out_dir: str, args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    from banyan.model.parallel import init_distributed

    comm = init_distributed(rank, world, f"file://{rendezvous}", timeout_s=60)
    try:
        result = fn(comm, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def dist_run(fn: Callable, tmp_path: Path, world: int = 2, args: tuple = ()) -> list[Any]:
    """`fn(comm, *args)` on `world` ranks (a module-level function); its per-rank results."""
    out_dir = tmp_path / f"dist-{fn.__name__}"
    out_dir.mkdir(exist_ok=True)
    mp.start_processes(_entry, args=(fn, world, str(tmp_path / f"rdzv-{fn.__name__}"), str(out_dir), args),
                       nprocs=world, start_method="spawn", join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
