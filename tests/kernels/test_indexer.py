"""The indexer's top-k against brute-force scores, for prefill-like and decode-like groups."""

import pytest
import torch

from banyan.kernels import indexer as ki
from banyan.kernels import native
from banyan.kernels.indexer import QueryGroup, indexer_topk


def brute_force(q, weights, keys, tokens, candidates, visible, topk):
    """Per query: score every visible candidate with the formula, keep the best `topk` rows."""
    picks = {}
    for g in range(tokens.shape[0]):
        for i in range(tokens.shape[1]):
            t, n = int(tokens[g, i]), int(visible[g, i])
            rows = candidates[g, :n]
            scores = (torch.relu(q[t].double() @ keys[rows].double().T) * weights[t].double().unsqueeze(1)).sum(0)
            picks[t] = rows[scores.topk(min(topk, n)).indices].tolist()
    return picks


def group(tokens, candidates, visible):
    visible = torch.as_tensor(visible)
    return QueryGroup(torch.as_tensor(tokens), candidates, visible, visible.numpy())


@pytest.mark.parametrize("native_scores, native_topk", [(True, True), (True, False), (False, False)],
                         ids=["native-scores", "native-scores-torch-topk", "torch-slabs"])
def test_top_k_rows_match_brute_force_and_pad_with_minus_one(monkeypatch, native_scores, native_topk):
    if not native_scores:
        monkeypatch.setattr(ki.native, "indexer_scores", lambda *a: None)
    elif native.library() is None:
        pytest.skip("no C compiler here")
    if not native_topk:
        monkeypatch.setattr(ki.native, "topk_rows", lambda *a: None)
    gen = torch.Generator().manual_seed(0)
    t, h, d, pool, topk = 9, 4, 16, 60, 5
    q, weights, keys = torch.randn(t, h, d, generator=gen), torch.rand(t, h, generator=gen), torch.randn(pool, d, generator=gen)
    # tokens 0..5: one request's chunk over its 12 entries, query i seeing 1 + 2i of them;
    # tokens 6..8: three decode tokens of requests with 3, 0 and 12 entries
    chunk_rows = torch.randperm(pool, generator=gen)[:12]
    chunk = group([[0, 1, 2, 3, 4, 5]], chunk_rows.view(1, -1), [[1, 3, 5, 7, 9, 11]])
    decode_rows = torch.full((3, 12), -1)
    decode_rows[0, :3] = torch.tensor([40, 41, 42])
    decode_rows[2] = torch.randperm(pool, generator=gen)[:12]
    decode = group([[6], [7], [8]], decode_rows, [[3], [0], [12]])
    expected = {**brute_force(q, weights, keys, chunk.tokens, chunk.candidates, chunk.visible, topk),
                **brute_force(q, weights, keys, decode.tokens, decode.candidates, decode.visible, topk)}
    for budget in (ki.SCORE_BUDGET, 1):  # one slab, or one query per slab
        monkeypatch.setattr(ki, "SCORE_BUDGET", budget)
        fresh = [QueryGroup(g.tokens, g.candidates, g.visible, g.visible_host) for g in (chunk, decode)]
        out = indexer_topk(q, weights, keys, fresh, topk)
        assert out.shape == (t, topk)
        for token, rows in expected.items():
            got = out[token].tolist()
            assert got[:len(rows)] == rows, token  # best first
            assert got[len(rows):] == [-1] * (topk - len(rows)), token


def test_width_is_capped_by_the_candidates():
    gen = torch.Generator().manual_seed(1)
    q, weights, keys = torch.randn(2, 2, 8, generator=gen), torch.rand(2, 2, generator=gen), torch.randn(10, 8, generator=gen)
    out = indexer_topk(q, weights, keys, [group([[0, 1]], torch.tensor([[4, 7]]), [[0, 2]])], topk=16)
    assert out.shape == (2, 2)
    assert out[0].tolist() == [-1, -1]
    assert sorted(out[1].tolist()) == [4, 7]
    empty = indexer_topk(q, weights, keys, [group([[0, 1]], torch.empty(1, 0, dtype=torch.long), [[0, 0]])], 16)
    assert empty.shape == (2, 0)


@pytest.mark.parametrize("native_scores", [True, False], ids=["native-scores", "torch-slabs"])
def test_scores_are_computed_in_bounded_slabs(monkeypatch, native_scores):
    """torch: each slab's `[queries, H, E]` dot products fit the budget; native: its `[queries, E]` scores."""
    if not native_scores:
        monkeypatch.setattr(ki.native, "indexer_scores", lambda *a: None)
    elif native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(2)
    t, h, d, e = 64, 4, 8, 256
    # small integers: every score is exact whatever the slab shapes
    q, keys = torch.randint(-3, 4, (t, h, d), generator=gen).float(), torch.randint(-3, 4, (e, d), generator=gen).float()
    weights = torch.randint(1, 4, (t, h), generator=gen).float()
    def picked_scores(out):  # ties may resolve differently between slab shapes: compare scores
        return [sorted((torch.relu(q[i].double() @ keys[r].double()) * weights[i].double()).sum().item()
                       for r in row if r >= 0) for i, row in enumerate(out.tolist())]

    def chunk():  # a fresh group: slabs are planned on first use
        return group([list(range(t))], torch.arange(e).view(1, e), [[4 * i for i in range(t)]])
    whole = indexer_topk(q, weights, keys, [chunk()], 8)
    largest = [0]

    def recording(op):
        def run(*args):
            out = op(*args)
            largest[0] = max(largest[0], out.numel() * out.element_size())
            return out
        return run
    budget = 8 * h * e * 4  # eight queries' dot products, or 32 queries' scores
    monkeypatch.setattr(ki, "SCORE_BUDGET", budget)
    if native_scores:
        monkeypatch.setattr(ki.native, "indexer_scores", recording(native.indexer_scores))
    else:
        monkeypatch.setattr(torch, "bmm", recording(torch.bmm))
    assert picked_scores(indexer_topk(q, weights, keys, [chunk()], 8)) == picked_scores(whole)
    assert 0 < largest[0] <= budget
