"""The forward as a device program: no host reads between the first layer and the logits,
per-step metadata built on the host and moved in one copy, correct row lists."""

from __future__ import annotations

import pytest
import torch

from banyan.model.batch import BatchPlan, ForwardBatch
from banyan.model.generate import SimpleSession
from banyan.tests.conftest import random_prompt

TOL = 1e-4
HOST_READS = ("item", "tolist", "cpu", "numpy", "nonzero", "__int__", "__index__", "__float__", "__bool__")


class HostReadTrap:
    """Makes every host read of a tensor raise while armed."""

    def __init__(self) -> None:
        self.saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        self.armed_forwards = 0

    def arm(self, *_) -> None:
        for name in HOST_READS:
            setattr(torch.Tensor, name, self._raiser(name))
        self.armed_forwards += 1

    def disarm(self, *_) -> None:
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)

    @staticmethod
    def _raiser(name):
        def read(*args, **kwargs):
            raise AssertionError(f"host read Tensor.{name} inside the forward")
        return read


def test_forward_reads_nothing_back_from_the_device(tiny_model, oracle_logits):
    """A prefill chunk, a whole prompt and a decode token in one batch, then a decode batch,
    with host reads trapped from layer 0's start to the head."""
    a, b, c = random_prompt(400, seed=4), random_prompt(260, seed=5), random_prompt(150, seed=6)
    session = SimpleSession(tiny_model, max_tokens=512, max_requests=3)
    session.prefill(0, a[:333])
    session.prefill(1, b[:259])
    trap = HostReadTrap()
    hooks = [tiny_model.layers[0].register_forward_pre_hook(trap.arm), tiny_model.head.register_forward_hook(trap.disarm)]
    try:
        with pytest.raises(AssertionError, match="host read"):  # the trap works
            trap.arm()
            torch.ones(1).item()
        trap.disarm()
        trap.armed_forwards = 0
        mixed = session.extend({0: a[333:], 1: b[259:], 2: c[:149]}, all_logits=True)
        decoded = session.extend({0: [7], 2: [c[149]]})
    finally:
        trap.disarm()
        for h in hooks:
            h.remove()
    assert trap.armed_forwards == 2
    assert (mixed[0] - oracle_logits(a)[333:]).abs().max() <= TOL
    assert (mixed[1] - oracle_logits(b)[259:]).abs().max() <= TOL
    assert (mixed[2] - oracle_logits(c)[:149]).abs().max() <= TOL
    assert (decoded[1] - oracle_logits(c)[149]).abs().max() <= TOL


def plan_batch(device_ids: bool = False) -> tuple[ForwardBatch, torch.Tensor]:
    """Request 0: positions 126..131 (its window crosses a page); request 1: one decode token
    at position 300; request 2: a new 4-token prompt. Pages are scattered on purpose."""
    table = torch.tensor([[5, 2, 9, 0], [7, 1, 3, 4], [8, 0, 0, 0]])
    ids = torch.arange(11) + 100
    return ForwardBatch(ids, [126, 300, 0], [6, 1, 4], [2, 0, 1], table, table), table


def test_plan_row_lists_follow_positions_and_pages(tiny_model):
    cfg = tiny_model.cfg
    batch, table = plan_batch()
    plan = BatchPlan(batch, cfg, 128, torch.device("cpu"))
    pos = [126, 127, 128, 129, 130, 131, 300, 0, 1, 2, 3]
    req = [0] * 6 + [1] + [2] * 4
    assert plan.positions.tolist() == pos

    def swa_slot(r, p):
        return int(table[r, p // 128]) * 128 + p % 128
    assert plan.swa_slots.tolist() == [swa_slot(r, p) for r, p in zip(req, pos)]
    window = plan.window
    for i, (r, p) in enumerate(zip(req, pos)):
        n = min(cfg.sliding_window, p + 1)
        assert window.lengths[i] == n
        assert window.indices[i, :n].tolist() == [swa_slot(r, p - j) for j in range(n)]
        assert (window.indices[i, n:] == -1).all()
    hca = cfg.hca_ratio
    for i, (r, p) in enumerate(zip(req, pos)):
        n = (p + 1) // hca
        assert plan.hca.lengths[i] == n
        assert plan.hca.indices[i, :n].tolist() == [int(table[r, w * hca // 128]) * (128 // hca) for w in range(n)]
        assert (plan.hca.indices[i, n:] == -1).all()
    # indexer groups: the decode token alone, then each longer chunk
    groups = plan.indexer_groups
    assert [g.tokens.tolist() for g in groups] == [[[6]], [list(range(6))], [list(range(7, 11))]]
    assert groups[1].visible.tolist() == [[(p + 1) // cfg.csa_ratio for p in pos[:6]]]
    csa, per_page = cfg.csa_ratio, 128 // cfg.csa_ratio  # a CSA page holds 32 consecutive entry slots
    for group, r, end in zip(groups, [1, 0, 2], [301, 132, 4]):  # each request's entries in order
        assert group.candidates.tolist() == [[int(table[r, w * csa // 128]) * per_page + w % per_page
                                              for w in range(end // csa)]]
    assert plan.logit_rows.tolist() == [5, 6, 10]


def test_plan_reaches_the_device_in_one_copy(tiny_model, monkeypatch):
    """Host tables and ids, any device: exactly one host-to-device transfer (the meta device
    stands in for an accelerator)."""
    batch, _ = plan_batch()
    moves = []
    to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if out.device.type == "meta":
            moves.append(tuple(out.shape))
        return out
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    plan = BatchPlan(batch, tiny_model.cfg, 128, torch.device("meta"))
    assert len(moves) == 1
    assert plan.input_ids.device.type == "meta" and plan.positions.device.type == "meta"
    assert plan.window.indices.device.type == "meta"
