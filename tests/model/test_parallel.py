"""The communicator contract on two gloo ranks, and the parallel layout arithmetic."""

from __future__ import annotations

import pytest
import torch

from banyan.model.checkpoint_names import is_stacked_expert, tp_split_dim
from banyan.model.generate import SimpleSession
from banyan.model.loader import CheckpointError, load_model
from banyan.model.parallel import LocalCommunicator, Parallel, ParallelConfig
from banyan.tests.conftest import random_prompt
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
    with pytest.raises(ValueError, match="tensor parallelism inside a group"):
        ParallelConfig(tp=2, dp=2, ep=4).check_layout()
    with pytest.raises(ValueError, match="tp must be >= 1"):
        ParallelConfig(tp=0)
    with pytest.raises(ValueError, match="outside the world"):
        ParallelConfig(tp=2, rank=2)


# ---- sharded loading (in process: a rank's shard needs no collective to load) --------------------------

def _rank_model(path, tp: int, ep: int, rank: int, weight_format: str = "dequant"):
    parallel = Parallel(ParallelConfig(tp=tp, ep=ep, rank=rank))
    return load_model(path, progress=False, weight_format=weight_format, parallel=parallel)


@pytest.mark.parametrize("layout", ["official", "transformers"])
@pytest.mark.parametrize("tp,ep", [(2, 1), (1, 2)])
def test_each_rank_loads_its_slices(tiny_model, tiny_official, tiny_transformers, layout, tp, ep):
    """Every tensor of a rank's shard equals that rank's slice of the whole model (FP8 slices
    that cut through scale blocks included: wo_a's 32 rows per rank)."""
    path = tiny_official if layout == "official" else tiny_transformers
    full = tiny_model.state_dict()
    n_experts = tiny_model.cfg.n_routed_experts
    for rank in range(max(tp, ep)):
        shard = _rank_model(path, tp, ep, rank).state_dict()
        assert shard.keys() == full.keys()
        for name, got in shard.items():
            want = full[name]
            if is_stacked_expert(name) and ep > 1:
                want = want[rank * n_experts // ep:(rank + 1) * n_experts // ep]
            dim = tp_split_dim(name, ep > 1) if tp > 1 else None
            if dim is not None:
                dim += 1 if is_stacked_expert(name) else 0
                part = want.shape[dim] // tp
                want = want.narrow(dim, rank * part, part)
            assert torch.equal(got, want), name


def test_stored_slices_must_be_whole_scale_blocks(tiny_official):
    with pytest.raises(CheckpointError, match="wo_a.*cuts through its fp8 scale blocks"):
        _rank_model(tiny_official, 2, 1, 0, weight_format="native")


def test_stored_slices_keep_their_scale_blocks(tmp_path):
    """A config whose TP2 slices are whole blocks (wo_a/wo_b 128 per rank, experts 128 rows):
    each rank keeps its FP8/FP4 weights and scales as stored, byte for byte the slice of the
    whole stored model."""
    from banyan.model.config import ModelConfig
    from banyan.model.make_tiny import make_tiny

    cfg = ModelConfig.preset("tiny").replace(o_lora_rank=128, moe_intermediate_size=256, n_shared_experts=0)
    path = make_tiny(tmp_path / "aligned", seed=2, cfg=cfg, mtp=False)
    full = load_model(path, progress=False, weight_format="native").state_dict()
    fp8_cut = {"attn.wq_b.weight": 0, "attn.wq_b.scale": 0, "attn.wo_a.weight": 0, "attn.wo_a.scale": 0,
               "attn.wo_b.weight": 1, "attn.wo_b.scale": 1}
    for rank in range(2):
        shard = _rank_model(path, 2, 1, rank, weight_format="native").state_dict()
        assert shard.keys() == full.keys()
        for name, got in shard.items():
            want, rest = full[name], name.split(".", 2)[-1]
            dim = fp8_cut.get(rest, tp_split_dim(name, False))
            if is_stacked_expert(name):
                dim = 1 + (1 if name.endswith("w2.weight") or name.endswith("w2.scale") else 0)
            if dim is not None and got.shape != want.shape:
                part = want.shape[dim] // 2
                want = want.narrow(dim, rank * part, part)
            assert got.dtype == want.dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name


def test_layouts_that_do_not_split_are_refused(tiny_official):
    with pytest.raises(ValueError, match="'o_groups' \\(2\\) does not split into 4"):
        _rank_model(tiny_official, 4, 1, 0)
    with pytest.raises(ValueError, match="ep must be 1 or the world size 4"):
        _rank_model(tiny_official, 4, 2, 0)


# ---- TP2 / EP2 forward against world size 1 ------------------------------------------------------------

PROMPT, CHUNK, DECODE = 200, 64, 4  # 50 CSA entries (> top-k 16), an HCA window; 4 greedy decode steps


def _greedy(model) -> tuple[torch.Tensor, list[int], list[torch.Tensor]]:
    """Chunked prefill then greedy decode; (all logits, generated tokens, the replicated KV state)."""
    session = SimpleSession(model, max_tokens=PROMPT + DECODE + 1, max_requests=1)
    ids = random_prompt(PROMPT, seed=11)
    rows = [torch.cat(session.extend({0: ids[i:i + CHUNK]}, all_logits=True)) for i in range(0, PROMPT, CHUNK)]
    tokens = []
    for _ in range(DECODE):
        tokens.append(int(rows[-1][-1].argmax()))
        rows.append(session.extend({0: [tokens[-1]]})[0].unsqueeze(0))
    state = [t for layer in session.cache.layers for t in _cache_tensors(layer)]
    return torch.cat(rows), tokens, state


def _cache_tensors(layer) -> list[torch.Tensor]:
    stores = layer.stores()
    return [layer.swa] + [t for s in stores for t in (s.entries, s.ring, s.snapshots) if t is not None]


def _sharded_greedy(comm, path: str, layouts: list[tuple[int, int]]):
    """Every layout in one pair of processes (one spawn)."""
    out = []
    for tp, ep in layouts:
        tp_comm = comm if tp > 1 else LocalCommunicator()
        parallel = Parallel(ParallelConfig(tp=tp, ep=ep, rank=comm.rank), tp_comm, comm)
        out.append(_greedy(load_model(path, progress=False, parallel=parallel)))
    return out


def _check_layouts(tiny_model, path, tmp_path, layouts) -> None:
    ref_logits, ref_tokens, _ = _greedy(tiny_model)
    ranks = dist_run(_sharded_greedy, tmp_path, args=(str(path), layouts))
    for i, layout in enumerate(layouts):
        for rank in ranks:
            logits, tokens, _ = rank[i]
            assert (logits - ref_logits).abs().max().item() <= 1e-4, layout
            assert tokens == ref_tokens, layout
        assert all(torch.equal(a, b) for a, b in zip(ranks[0][i][2], ranks[1][i][2])), layout


def test_tp2_and_ep2_match_world_size_one(tiny_model, tiny_official, tmp_path):
    """TP2 and EP2 on two gloo ranks: chunked-prefill and decode logits within 1e-4 of one
    process (fp32), the same greedy tokens, and the replicated KV state (sliding window,
    compressed entries, indexer keys, rings, snapshots) bitwise equal across the ranks."""
    _check_layouts(tiny_model, tiny_official, tmp_path, [(2, 1), (1, 2)])


@pytest.mark.slow
def test_tp2_with_ep2_matches_world_size_one(tiny_model, tiny_official, tmp_path):
    _check_layouts(tiny_model, tiny_official, tmp_path, [(2, 2)])


@pytest.mark.parametrize("tp,ep", [(2, 1), (1, 2)])
def test_footprint_per_rank_is_what_a_rank_holds(tiny_official, tp, ep):
    from banyan.model.footprint import resident_weight_bytes, weight_bytes

    shard = _rank_model(tiny_official, tp, ep, rank=1)
    counted = weight_bytes(shard.cfg, mtp=shard.mtp is not None, parallel=ParallelConfig(tp=tp, ep=ep))
    assert counted["dequant_fp32"]["total"] == resident_weight_bytes(shard)


# ---- data-parallel attention with EP MoE -----------------------------------------------------------------

def _dp_requests(rank: int) -> dict[int, list[int]]:
    """Rank 0 runs two requests, rank 1 one (then idles)."""
    return {0: random_prompt(150, seed=21), 1: random_prompt(90, seed=22)} if rank == 0 else \
        {0: random_prompt(120, seed=23)}


def _dp_steps(rank: int) -> list[dict[int, slice] | None]:
    """Per step, each slot's tokens (None: idle); both ranks run the same number of steps."""
    if rank == 0:
        return [{0: slice(0, 64), 1: slice(0, 90)}, {0: slice(64, 150)}, None, {0: slice(150, 151), 1: slice(90, 91)}]
    return [{0: slice(0, 100)}, None, {0: slice(100, 120)}, None]


def _dp_run(model, rank: int, idle) -> list[torch.Tensor]:
    """Run rank `rank`'s steps (a step past the prompt decodes the greedy token); logits of every step."""
    seqs = {s: list(p) for s, p in _dp_requests(rank).items()}
    session = SimpleSession(model, max_tokens=256, max_requests=2)
    out, last = [], {}
    for step in _dp_steps(rank):
        if step is None:
            idle()
            continue
        for s, part in step.items():
            if part.start == len(seqs[s]):
                seqs[s].append(int(last[s].argmax()))
        logits = session.extend({s: seqs[s][part] for s, part in step.items()})
        last.update(zip(step, logits))
        out.append(torch.stack(logits))
    return out


def _dp_rank(comm, path: str):
    parallel = Parallel(ParallelConfig(dp=2, ep=2, rank=comm.rank), LocalCommunicator(), comm)
    model = load_model(path, progress=False, parallel=parallel)
    return _dp_run(model, comm.rank, model.idle_forward)


def test_dp2_ep2_each_rank_matches_its_requests_alone(tiny_model, tiny_official, tmp_path):
    """DP-attention 2 + EP2: each rank runs its own batch (rank 1 idles on some steps, its
    experts still serving rank 0's tokens); every rank's logits are within 1e-4 of one process
    running that rank's requests alone."""
    ranks = dist_run(_dp_rank, tmp_path, args=(str(tiny_official),))
    for rank, got in enumerate(ranks):
        ref = _dp_run(tiny_model, rank, idle=lambda: None)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert (a - b).abs().max().item() <= 1e-4


def _ep_dispatch(comm, cases):
    from banyan.kernels import dispatch
    from banyan.kernels.quant import QuantizedWeight
    from banyan.model.parallel_layers import expert_parallel_moe

    gen = torch.Generator().manual_seed(3)
    w1, w3, w2 = (torch.randn(4, 16, 8, generator=gen), torch.randn(4, 16, 8, generator=gen),
                  torch.randn(4, 8, 16, generator=gen))
    mine = slice(2 * comm.rank, 2 * comm.rank + 2)  # 2 of the 4 experts per rank

    def local(x, idx, weights):
        return dispatch.fused_moe(x, idx, weights, *(QuantizedWeight(w[mine]) for w in (w1, w3, w2)), 7.0)

    parallel = Parallel(ParallelConfig(ep=2, rank=comm.rank), LocalCommunicator(), comm)
    out = []
    for x, idx, weights in cases:
        got = expert_parallel_moe(x, idx, weights, local, parallel, 4)
        want = dispatch.fused_moe(x, idx, weights, *(QuantizedWeight(w) for w in (w1, w3, w2)), 7.0)
        out.append((got - want).abs().max().item() if x.shape[0] else got.shape)
    return out


def test_expert_dispatch_matches_the_dense_experts(tmp_path):
    """Uneven token shares (3 + 2), a rank whose experts nobody picks, a one-token step (rank 1's
    share is empty) and an empty step: within 1e-5 of every expert in one process."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 8, generator=gen)
    weights = torch.rand(5, 2, generator=gen)
    cases = [(x, torch.tensor([[0, 3], [1, 2], [3, 0], [2, 2], [1, 0]]), weights),
             (x, torch.tensor([[0, 1]] * 5), weights),  # rank 1's experts receive nothing
             (x[:1], torch.tensor([[2, 3]]), weights[:1]),
             (x[:0], torch.zeros(0, 2, dtype=torch.long), weights[:0])]
    for result in dist_run(_ep_dispatch, tmp_path, args=(cases,)):
        assert all(d <= 1e-5 for d in result[:3]) and result[3] == (0, 8)
