"""The communicator contract on two gloo ranks, and the parallel layout arithmetic."""

from __future__ import annotations

import pytest
import torch

from banyan.model.parallel import LocalCommunicator, ParallelConfig
from banyan.tests.dist_harness import dist_run


def _collectives(comm):
    r = comm.rank
    x = torch.arange(4.0) + 10 * r  # rank 0: 0..3, rank 1: 10..13
    # uneven all_to_all: rank 0 sends 1 row to itself and 3 to rank 1; rank 1 sends 2 and 0 (an empty split)
    send = [1, 3] if r == 0 else [2, 0]
    recv = [1, 2] if r == 0 else [3, 0]
    rows = torch.arange(4.0).unsqueeze(1) + 100 * r
    return {
        "all_reduce": comm.all_reduce(x),
        "all_gather": comm.all_gather(x.view(2, 2), dim=1),
        "reduce_scatter": comm.reduce_scatter(x),
        "all_to_all": comm.all_to_all(rows[:sum(send)], send, recv),
        "empty_to_all": comm.all_to_all(rows[:0], [0, 0], [0, 0]),
        "broadcast": comm.broadcast(x, src=1),
        "object": comm.broadcast_object({"step": r}, src=0),
    }


def test_collectives_on_two_gloo_ranks(tmp_path):
    r0, r1 = dist_run(_collectives, tmp_path)
    total = torch.arange(4.0) * 2 + 10
    for r in (r0, r1):
        assert torch.equal(r["all_reduce"], total)
        assert torch.equal(r["all_gather"], torch.tensor([[0.0, 1, 10, 11], [2, 3, 12, 13]]))
        assert torch.equal(r["broadcast"], torch.arange(4.0) + 10)
        assert r["object"] == {"step": 0} and r["empty_to_all"].shape == (0, 1)
    assert torch.equal(r0["reduce_scatter"], total[:2]) and torch.equal(r1["reduce_scatter"], total[2:])
    assert r0["all_to_all"].flatten().tolist() == [0.0, 100, 101]  # its own row 0, then rank 1's rows 0..1
    assert r1["all_to_all"].flatten().tolist() == [1.0, 2, 3]


def test_world_size_one_is_the_identity():
    comm, x = LocalCommunicator(), torch.randn(3, 2)
    assert comm.all_reduce(x) is x and comm.all_gather(x) is x and comm.all_to_all(x, [3], [3]) is x


def test_parallel_config_ranks_and_errors():
    cfg = ParallelConfig(tp=2, dp=2, ep=4, rank=3)
    assert (cfg.world_size, cfg.tp_rank, cfg.dp_rank, cfg.ep_rank) == (4, 1, 1, 3)
    with pytest.raises(ValueError, match="ep must be 2"):
        ParallelConfig(dp=2, ep=1)
    with pytest.raises(ValueError, match="tp must be >= 1"):
        ParallelConfig(tp=0)
    with pytest.raises(ValueError, match="outside the world"):
        ParallelConfig(tp=2, rank=2)
