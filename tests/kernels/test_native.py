"""The native CPU helpers: bit-equal to the torch loops they replace, and optional."""

import pytest
import torch
import torch.nn.functional as F

from banyan.kernels import mhc, native
from banyan.kernels.mhc import TOKENS_LAST_MIN
from banyan.kernels.triton.ref import attention as ref_attention
from banyan.kernels.triton.ref import moe as ref_moe
from banyan.kernels.rope import apply_rope_, rope_inv_freq, rope_table


@pytest.fixture
def native_off(monkeypatch):
    """Run with the native helpers disabled (the torch loops), restoring the cached library after."""
    monkeypatch.setenv(native.ENV, "0")
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def _combs(t: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(t, n, n, generator=gen) * 3, dim=-1) + 1e-6  # sharp rows


def _torch_sinkhorn(comb: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The torch loops' small-batch form (sums in order), a few tokens at a time. (Its tokens-last
    form equals it for n <= 4, V4's hc_mult; torch's outer-dim sums of more terms regroup them.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "sinkhorn_", lambda *a: False)
        return torch.cat([mhc.sinkhorn(part.clone(), 1e-6, iters) for part in comb.split(TOKENS_LAST_MIN - 1)])


@pytest.mark.parametrize("t", [1, 3, 8, 9, TOKENS_LAST_MIN, 2 * TOKENS_LAST_MIN + 5])
@pytest.mark.parametrize("n", [2, 4, 5])
def test_native_sinkhorn_equals_the_torch_loops_to_the_bit(t, n):
    if native.library() is None:
        pytest.skip("no C compiler here")
    comb = _combs(t, n, seed=t * 10 + n)
    got = comb.clone()
    assert native.sinkhorn_(got, 1e-6, 20)
    assert torch.equal(got, _torch_sinkhorn(comb))
    assert torch.equal(mhc.sinkhorn(comb.clone(), 1e-6, 20), got)  # what the model calls takes this path


def test_native_sinkhorn_declines_what_it_does_not_take():
    comb = _combs(4, 4, seed=0)
    for case in (comb.double(), comb.transpose(1, 2), _combs(2, native.MAX_N + 1, seed=1), comb[0]):
        before = case.clone()
        assert not native.sinkhorn_(case, 1e-6, 20)
        assert torch.equal(case, before)


def test_disabled_or_unbuildable_falls_back_to_torch(native_off, monkeypatch, tmp_path):
    assert native.library() is None  # BANYAN_NATIVE=0
    comb = _combs(5, 4, seed=3)
    assert torch.equal(mhc.sinkhorn(comb.clone(), 1e-6, 20).contiguous(), _torch_sinkhorn(comb))

    monkeypatch.setenv(native.ENV, "1")
    monkeypatch.setenv("BANYAN_HOME", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    assert native.library() is None
    assert not any(tmp_path.rglob("*.so"))


@pytest.fixture
def split_over(monkeypatch):
    """Make every helper call split its work over `n` threads."""
    def split(n: int) -> None:
        monkeypatch.setattr(native, "_max_threads", n)
        monkeypatch.setattr(native, "STREAM_MIN_BYTES", 0)
    return split


def _bf16_weight(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).bfloat16().float()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("threads", [1, 3])
def test_bf16_gemv_matches_the_fp32_product(rows, threads, split_over):
    if native.library() is None:
        pytest.skip("no C compiler here")
    split_over(threads)
    weight = _bf16_weight(1000, 48, seed=rows)  # 1000: a last panel of 8 rows
    x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(7))
    panels = native.pack_bf16_panels(weight)
    assert panels.shape == (-(-1000 // native.PANEL), 48, native.PANEL)
    got = native.bf16_gemv(x, panels, 1000)
    torch.testing.assert_close(got, x @ weight.t(), rtol=1e-5, atol=1e-5)


def test_bf16_gemv_shares_its_panels_between_threads(split_over):
    """2,100 rows are three chunks of panels, taken by two threads from one queue."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    split_over(2)
    weight = _bf16_weight(2100, 32, seed=5)
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(8))
    got = native.bf16_gemv(x, native.pack_bf16_panels(weight), 2100)
    torch.testing.assert_close(got, x @ weight.t(), rtol=1e-5, atol=1e-5)


def test_bf16_packing_refuses_weights_it_would_round():
    weight = _bf16_weight(32, 16, seed=0)
    assert native.pack_bf16_panels(weight) is not None
    weight[3, 5] += 1e-3  # no longer a bf16 value
    assert native.pack_bf16_panels(weight) is None


def _indexer_reference(q, weights, keys, candidates, visible):
    dots = torch.einsum("thd,ted->the", q, keys[candidates]).relu()  # [T, H, E]
    scores = (weights.unsqueeze(-1) * dots).sum(1)  # [T, E]
    return scores.masked_fill(torch.arange(candidates.shape[1]) >= visible.unsqueeze(-1), float("-inf"))


# one vector panel, V4-Flash's 64 heads (panels summed before the lane sums), a panel and a tail, a tail only
@pytest.mark.parametrize("heads", [16, 64, 20, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_indexer_scores_match_torch(heads, threads, split_over):
    if native.library() is None:
        pytest.skip("no C compiler here")
    split_over(threads)
    gen = torch.Generator().manual_seed(heads)
    q, weights = torch.randn(3, heads, 32, generator=gen), torch.randn(3, heads, generator=gen)
    keys = torch.randn(300, 32, generator=gen)
    candidates = torch.randint(0, 300, (3, 77), generator=gen)
    visible = torch.tensor([77, 13, 0])  # all, some, none
    got = native.indexer_scores(q, weights, keys, candidates, visible)
    want = _indexer_reference(q, weights, keys, candidates, visible)
    assert torch.equal(got.isinf(), want.isinf())
    torch.testing.assert_close(got[~want.isinf()], want[~want.isinf()], rtol=1e-5, atol=1e-5)
    assert native.indexer_scores(q.double(), weights, keys, candidates, visible) is None


@pytest.mark.parametrize("threads", [1, 2])
def test_native_indexer_scores_chunk_long_candidate_lists(threads, split_over):
    """1,100 candidates: on two threads, three chunks per query (a full one, a partial one and, for
    the query that sees 600, an empty one); on one, two queries are a slab scored in tiles of 64.
    Either way the rows are prefetched across the chunk or tile boundaries."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    split_over(threads)
    gen = torch.Generator().manual_seed(4)
    q, weights = torch.randn(2, 16, 32, generator=gen), torch.randn(2, 16, generator=gen)
    keys = torch.randn(3000, 32, generator=gen)
    candidates = torch.randint(0, 3000, (2, 1100), generator=gen)
    visible = torch.tensor([1100, 600])
    got = native.indexer_scores(q, weights, keys, candidates, visible)
    want = _indexer_reference(q, weights, keys, candidates, visible)
    assert torch.equal(got.isinf(), want.isinf())
    torch.testing.assert_close(got[~want.isinf()], want[~want.isinf()], rtol=1e-5, atol=1e-5)


def test_native_hc_pre_declines_what_it_does_not_take():
    n, d = 4, 8
    fn, scale, base = torch.randn((2 + n) * n, n * d), torch.ones(3), torch.zeros((2 + n) * n)
    for streams in (torch.randn(native.HC_PRE_MAX_TOKENS + 1, n, d), torch.randn(2, n, d).double(),
                    torch.randn(0, n, d)):
        assert native.hc_pre(streams, fn, scale, base, 1e-6, 1e-6, 20) is None


@pytest.mark.parametrize("weighted", [True, False])
def test_native_norm_rope_matches_norm_then_rope(weighted):
    if native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(11)
    x, weight = torch.randn(3, 4, 40, generator=gen), torch.randn(40, generator=gen) if weighted else None
    table = rope_table(torch.tensor([0, 5, 900]), rope_inv_freq(16, 10000.0))  # [T, 8]
    want = apply_rope_(_torch_rms_norm(x, weight), table)
    torch.testing.assert_close(native.norm_rope(x, weight, 1e-6, table), want, atol=1e-5, rtol=1e-5)

    pool = torch.full((6, 40), 7.0)  # the paged-insert form: token t's row to pool[slots[t]]
    rows = x[:, 0]
    native.norm_rope(rows, weight, 1e-6, table, pool, torch.tensor([4, -1, 1]))
    expected = apply_rope_(_torch_rms_norm(rows, weight), table)
    torch.testing.assert_close(pool[[4, 1]], expected[[0, 2]], atol=1e-5, rtol=1e-5)
    assert torch.equal(pool[[0, 2, 3, 5]], torch.full((4, 40), 7.0))  # -1: nothing written


def _torch_rms_norm(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, 1e-6)


def _needs_library():
    if native.library() is None:
        pytest.skip("no C compiler here")


@pytest.mark.parametrize("shape", [(1, 64), (3, 4, 40), (native.PROLOGUE_MAX_TOKENS, 24)])
@pytest.mark.parametrize("weighted", [True, False])
def test_native_rms_norm_matches_torch(shape, weighted):
    _needs_library()
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(*shape, generator=gen), torch.randn(shape[-1], generator=gen) if weighted else None
    torch.testing.assert_close(native.rms_norm(x, weight, 1e-6), _torch_rms_norm(x, weight), atol=1e-6, rtol=1e-5)
    assert native.rms_norm(torch.randn(native.PROLOGUE_MAX_TOKENS + 1, 8), None, 1e-6) is None
    assert native.rms_norm(x.double(), None, 1e-6) is None


def _torch_route(logits, bias, k, tid2eid=None, input_ids=None):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ref_moe.native, "route", lambda *a: None)
        return ref_moe.route(logits, bias, k, 1.5, tid2eid, input_ids)


@pytest.mark.parametrize("t, e, k", [(1, 8, 2), (5, 64, 6), (native.MOE_MAX_TOKENS, 256, 8)])
def test_native_route_picks_the_torch_experts_and_weights(t, e, k):
    _needs_library()
    gen = torch.Generator().manual_seed(t * e)
    logits, bias = torch.randn(t, e, generator=gen) * 8, torch.randn(e, generator=gen)  # both softplus branches
    logits[0, 0] = 25.0
    ids, weights = native.route(logits, bias, k, 1.5, None, None)
    want_ids, want_weights = _torch_route(logits, bias, k)
    order, want_order = ids.argsort(1), want_ids.argsort(1)  # ids come in no particular order
    assert torch.equal(ids.gather(1, order), want_ids.gather(1, want_order))
    torch.testing.assert_close(weights.gather(1, order), want_weights.gather(1, want_order), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(1), torch.full((t,), 1.5))


def test_native_route_reads_hash_layers_table_and_declines_foreign_tokens():
    _needs_library()
    gen = torch.Generator().manual_seed(2)
    logits, tid2eid = torch.randn(3, 8, generator=gen), torch.randint(0, 8, (50, 2), generator=gen)
    tokens = torch.tensor([4, 49, 0])
    ids, weights = native.route(logits, None, 2, 1.5, tid2eid, tokens)
    want_ids, want_weights = _torch_route(logits, None, 2, tid2eid, tokens)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(weights, want_weights, atol=1e-6, rtol=1e-5)
    assert native.route(logits, None, 2, 1.5, tid2eid, torch.tensor([4, 50, 0])) is None  # torch raises instead
    assert native.route(logits, torch.zeros(8), 9, 1.5, None, None) is None  # k > experts


def test_native_hc_post_matches_the_torch_mix():
    _needs_library()
    gen = torch.Generator().manual_seed(5)
    t, n, d = 3, 4, 40
    out, streams = torch.randn(t, d, generator=gen), torch.randn(t, n, d, generator=gen)
    post, comb = torch.rand(t, n, generator=gen), torch.rand(t, n, n, generator=gen)
    want = post.unsqueeze(-1) * out.unsqueeze(1) + torch.einsum("tjk,tjd->tkd", comb, streams)
    torch.testing.assert_close(native.hc_post(out, streams, post, comb), want, atol=1e-5, rtol=1e-5)
    assert native.hc_post(out.double(), streams.double(), post.double(), comb.double()) is None


def test_native_compressor_rows_match_the_two_projections():
    _needs_library()
    gen = torch.Generator().manual_seed(6)
    x, wkv, wgate = torch.randn(3, 64, generator=gen), torch.randn(80, 64, generator=gen), torch.randn(80, 64, generator=gen)
    ape, index = torch.randn(4, 80, generator=gen), torch.tensor([3, 0, 1])
    want = torch.stack([x @ wkv.T, x @ wgate.T + ape[index]], dim=1)
    torch.testing.assert_close(native.compressor_rows(x, wkv, wgate, ape, index), want, atol=1e-5, rtol=1e-5)
    many = torch.randn(40, 64, generator=gen)  # past the native's token limit: torch's GEMMs
    want = torch.stack([many @ wkv.T, many @ wgate.T + ape[0]], dim=1)
    got = ref_attention.compressor_rows(many, wkv, wgate, ape, torch.zeros(40, dtype=torch.long))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert native.compressor_rows(x, wkv.double(), wgate, ape, index) is None


def test_native_swiglu_mlp_is_the_shared_expert():
    _needs_library()
    gen = torch.Generator().manual_seed(7)
    x, w1, w3, w2 = (torch.randn(*s, generator=gen) for s in ((2, 64), (96, 64), (96, 64), (64, 96)))
    want = F.linear(ref_moe.swiglu(F.linear(x, w1), F.linear(x, w3), 10.0), w2)
    torch.testing.assert_close(native.swiglu_mlp(x, w1, w3, w2, 10.0), want, atol=1e-4, rtol=1e-5)
    assert native.swiglu_mlp(torch.randn(native.MOE_MAX_TOKENS + 1, 64), w1, w3, w2, 10.0) is None


@pytest.mark.parametrize("shared", [True, False])
def test_native_topk_rows_is_topk_gather_and_mask(shared):
    _needs_library()
    gen = torch.Generator().manual_seed(8)
    t, e, k = 5, 300, 16
    scores = torch.randn(t, e, generator=gen)
    scores[1, 10:] = float("-inf")  # a row that sees only 10 candidates
    candidates = torch.randperm(1000, generator=gen)[:e + 7].view(1, -1).expand(1 if shared else t, -1).contiguous()
    vals, local = scores.topk(k, dim=-1)
    want = candidates.expand(t, -1).gather(1, local).masked_fill(vals == float("-inf"), -1)
    got = native.topk_rows(scores, k, candidates)
    assert torch.equal(got, want)
    assert got[1, 10:].eq(-1).all() and got[1, :10].ge(0).all()
    assert native.topk_rows(scores, e + 1, candidates) is None
    assert native.topk_rows(scores, k, candidates[:, :e - 1]) is None  # fewer candidates than scores


@pytest.mark.parametrize("v", [1, 7, 128, 129, 1000, 40 * 128, 129280])
def test_native_argmax_is_the_first_maximum_like_max(v):
    if native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(v)
    x = torch.randn(7, v, generator=gen)
    x[1] = float("-inf")
    x[2, v // 2] = float("nan")  # NaN counts as the maximum
    x[2, -1] = float("nan")
    x[3, -1] = float("nan")  # a NaN in the tail past the last whole block
    x[4, [v - 1, v // 3]] = 50.0  # a tie: the first wins
    x[5, :] = 2.0  # all equal: the first
    x[6, -1] = float("inf")
    got = native.argmax_rows(x)
    assert torch.equal(got, x.max(dim=-1).indices)
    assert got[5].item() == 0 and got[4].item() == min(v - 1, v // 3)


def test_native_argmax_declines_what_it_does_not_take():
    assert native.argmax_rows(torch.randn(2, 8).double()) is None
    assert native.argmax_rows(torch.randn(8)) is None
    assert native.argmax_rows(torch.randn(2, 0)) is None
