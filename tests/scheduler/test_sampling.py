import pytest
import torch
from banyan.kernels import native

from banyan.model.sampling import (ARGMAX_BLOCK, NUCLEUS_CANDIDATES, SamplingRow, first_argmax, sample,
                                   target_distribution)


def logits_row(values):
    return torch.tensor([values], dtype=torch.float32)


def test_greedy_and_logprobs():
    res = sample(logits_row([1.0, 3.0, 2.0]), [SamplingRow(temperature=0, top_logprobs=2)])
    assert res.tokens == [1]
    expected = torch.log_softmax(torch.tensor([1.0, 3.0, 2.0]), -1)
    assert abs(res.logprobs[0] - expected[1].item()) < 1e-6
    assert [i for i, _ in res.top_logprobs[0]] == [1, 2]


def test_logprobs_only_for_the_rows_that_ask():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    before = logits.clone()
    rows = [SamplingRow(temperature=0, logprob=False), SamplingRow(temperature=0, top_logprobs=3),
            SamplingRow(temperature=0, logprob=False, logit_bias={7: 100.0}), SamplingRow(temperature=0)]
    res = sample(logits, rows)
    assert torch.equal(logits, before)  # the caller's logits are left alone
    assert res.tokens == [*torch.argmax(logits[:2], -1).tolist(), 7, int(torch.argmax(logits[3]))]
    expected = torch.log_softmax(logits, -1)
    assert res.logprobs[0] is None and res.logprobs[2] is None
    for i in (1, 3):
        assert abs(res.logprobs[i] - expected[i, res.tokens[i]].item()) < 1e-5
    top = torch.topk(expected[1], 3)
    assert [t for t, _ in res.top_logprobs[1]] == top.indices.tolist() and res.top_logprobs[3] == []
    assert all(abs(a - b) < 1e-5 for (_, a), b in zip(res.top_logprobs[1], top.values.tolist()))


def test_top_k_top_p_min_p_restrict_the_support():
    lg = logits_row([0.0, 1.0, 2.0, 3.0, 4.0])
    gen = torch.Generator().manual_seed(0)
    for row, allowed in ((SamplingRow(top_k=2, generator=gen), {3, 4}),
                         (SamplingRow(top_p=0.5, generator=gen), {4}),
                         (SamplingRow(min_p=0.3, generator=gen), {3, 4})):
        seen = {sample(lg, [row]).tokens[0] for _ in range(200)}
        assert seen <= allowed and len(seen) >= 1


def test_penalties_bias_and_mask():
    lg = logits_row([2.0, 1.9, 0.0, -1.0])
    assert sample(lg, [SamplingRow(temperature=0, output_ids=[0], presence_penalty=0.5)]).tokens == [1]
    assert sample(lg, [SamplingRow(temperature=0, output_ids=[0, 0], frequency_penalty=0.1)]).tokens == [1]
    assert sample(lg, [SamplingRow(temperature=0, prompt_ids=[0], repetition_penalty=1.2)]).tokens == [1]
    assert sample(lg, [SamplingRow(temperature=0, logit_bias={3: 10.0})]).tokens == [3]
    mask = torch.tensor([False, False, True, False])
    res = sample(lg, [SamplingRow(temperature=0, allowed=mask)])
    assert res.tokens == [2] and abs(res.logprobs[0]) < 1e-6  # the mask renormalises


def test_seeded_generators_reproduce():
    lg = torch.randn(1, 50)
    a = [sample(lg, [SamplingRow(generator=torch.Generator().manual_seed(3))]).tokens[0] for _ in range(5)]
    b = [sample(lg, [SamplingRow(generator=torch.Generator().manual_seed(3))]).tokens[0] for _ in range(5)]
    assert a == b


def _reference_distribution(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p over the whole vocabulary with a full sort."""
    logits = logits / row.temperature
    if row.top_k > 0:
        logits = logits.masked_fill(logits < torch.topk(logits, row.top_k).values[-1], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if row.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        drop = (torch.cumsum(ordered, 0) - ordered) >= row.top_p
        probs = probs.scatter(0, order, ordered.masked_fill(drop, 0.0))
    if row.min_p > 0:
        probs = probs.masked_fill(probs < row.min_p * probs.max(), 0.0)
    return probs


@pytest.mark.parametrize("sharpness", [8.0, 0.05])  # a nucleus among the candidates; one far wider
def test_top_p_keeps_the_nucleus_a_full_sort_keeps(sharpness):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3 * NUCLEUS_CANDIDATES, generator=gen) * sharpness
    for row in (SamplingRow(top_p=0.9), SamplingRow(top_p=0.5, temperature=0.7), SamplingRow(top_p=0.95, min_p=0.01)):
        got, want = target_distribution(logits, row), _reference_distribution(logits, row)
        assert torch.equal(got, want)
        assert 0 < int((got > 0).sum()) < logits.numel()
    flat_nucleus = int((target_distribution(logits, SamplingRow(top_p=0.9)) > 0).sum())
    assert (flat_nucleus > NUCLEUS_CANDIDATES) == (sharpness < 1)  # both paths were taken


def test_top_k_with_top_p_matches_the_full_vocabulary_form_and_draws_from_it():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(1000, generator=gen) * 2
    row = SamplingRow(top_k=6, top_p=0.8, temperature=0.9, generator=torch.Generator().manual_seed(1))
    want = _reference_distribution(logits, row)
    assert torch.allclose(target_distribution(logits, row), want, atol=1e-7)
    draws = torch.tensor([sample(logits[None], [row]).tokens[0] for _ in range(3000)])
    seen = torch.bincount(draws, minlength=logits.numel()).float() / draws.numel()
    assert set(torch.nonzero(seen).flatten().tolist()) <= set(torch.nonzero(want).flatten().tolist())
    assert torch.allclose(seen, want / want.sum(), atol=0.03)  # the draw follows the distribution


@pytest.mark.parametrize("path", ["native", "torch"])
def test_first_argmax_is_the_first_maximum_like_max(path, monkeypatch):
    if path == "torch":
        monkeypatch.setattr(native, "argmax_rows", lambda x: None)
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 40 * ARGMAX_BLOCK, generator=gen)
    logits[0, [3 * ARGMAX_BLOCK + 5, 9 * ARGMAX_BLOCK]] = 50.0  # a tie across blocks: the first wins
    logits[1, [7, 3]] = 50.0  # a tie inside one block
    logits[2, [900, 4000]] = float("nan")  # NaN counts as the maximum, as in max
    logits[3] = float("-inf")
    logits[4, -1] = 50.0
    assert torch.equal(first_argmax(logits), logits.max(dim=-1).indices)
    assert first_argmax(logits).tolist()[:5] == [3 * ARGMAX_BLOCK + 5, 3, 900, 0, 40 * ARGMAX_BLOCK - 1]
    odd = torch.randn(3, 1000, generator=gen)  # a vocabulary that is not whole blocks
    assert torch.equal(first_argmax(odd), odd.argmax(-1))
    assert torch.equal(first_argmax(logits.T.contiguous().T), logits.max(dim=-1).indices)
