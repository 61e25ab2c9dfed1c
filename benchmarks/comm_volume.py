"""Communication volume per decode step of a sharded model, counted in the communicator.

    python -m banyan.benchmarks.comm_volume [MODEL_DIR] [--batch 1 8] [--out results/comm.json]

Spawns two gloo ranks on CPU, loads the checkpoint (default: a tiny random one written to a
temporary directory) under TP2 and EP2, prefills each request of the batch and then counts
the bytes each rank hands to every collective during one decode step (`TorchCommunicator.traffic`:
payload contributed, not the backend's wire bytes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .output import save, standalone

LAYOUTS = ((2, 1), (1, 2))  # (tp, ep)
PROMPT = 64


def _rank(rank: int, path: str, batches: list[int], rendezvous: str, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from ..model.generate import SimpleSession
    from ..model.loader import load_model
    from ..model.parallel import LocalCommunicator, Parallel, ParallelConfig, init_distributed

    torch.set_num_threads(1)
    comm = init_distributed(rank, 2, f"file://{rendezvous}", timeout_s=120)
    result = {}
    for tp, ep in LAYOUTS:
        parallel = Parallel(ParallelConfig(tp=tp, ep=ep, rank=rank), comm if tp > 1 else LocalCommunicator(), comm)
        model = load_model(path, progress=False, parallel=parallel)
        for batch in batches:
            session = SimpleSession(model, max_tokens=PROMPT + 1, max_requests=batch)
            session.extend({slot: list(range(100 + slot, 100 + slot + PROMPT)) for slot in range(batch)})
            comm.traffic.clear()
            session.extend({slot: [7] for slot in range(batch)})
            result[f"tp{tp} ep{ep} batch {batch}"] = dict(comm.traffic)
    if rank == 0:
        torch.save(result, out)
    torch.distributed.destroy_process_group()


def measure(path: str, batches: list[int]) -> dict[str, dict[str, int]]:
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "traffic.pt")
        mp.start_processes(_rank, args=(path, batches, str(Path(tmp) / "rdzv"), out), nprocs=2,
                           start_method="spawn", join=True)
        return torch.load(out)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="checkpoint directory (default: a tiny random one)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="decode batch sizes")
    p.add_argument("--out", default=None, help="JSON results file")


def run(args: argparse.Namespace) -> int:
    from ..model.make_tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(make_tiny(Path(tmp) / "tiny", seed=0))
        results = measure(path, args.batch)
    print(f"{'layout':<22}" + "".join(f"{op:>14}" for op in ("all_reduce", "all_gather", "all_to_all", "total KiB")))
    for name, traffic in results.items():
        print(f"{name:<22}" + "".join(f"{traffic.get(op, 0):>14,}" for op in ("all_reduce", "all_gather", "all_to_all"))
              + f"{sum(traffic.values()) / 1024:>14.1f}")
    save(args.out, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone(__doc__, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
