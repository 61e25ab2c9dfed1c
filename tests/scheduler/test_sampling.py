import torch

from banyan.model.sampling import SamplingRow, sample


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
