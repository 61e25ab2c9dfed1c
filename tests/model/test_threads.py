"""The intra-op thread count a model process picks on CPU, step by step."""

import pytest
import torch

from banyan.kernels import native
from banyan.model import threads
from banyan.model.kv_cache import CacheShape
from banyan.model.parallel import SINGLE
from banyan.model.runner import ModelRunner, RunRequest, SamplingRow
from banyan.model.threads import PARALLEL_MIN_ATTENDED, SPLIT_MIN_HIDDEN, step_threads
from banyan.runtime.options import EngineOptions
from banyan.runtime.rank_worker import load_shard


@pytest.fixture
def four_cores(monkeypatch):
    """torch's default taken to be 4 threads; the process rule and thread count restored after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "DEFAULT_THREADS", 4)
    monkeypatch.setattr(threads, "_process_rule", None)
    monkeypatch.setattr(native, "_max_threads", native._max_threads)
    yield
    torch.set_num_threads(before)


def test_narrow_models_split_only_big_steps_wide_ones_always(four_cores):
    big = PARALLEL_MIN_ATTENDED
    assert step_threads(64, 0) == step_threads(SPLIT_MIN_HIDDEN - 1, big - 1) == 1
    assert step_threads(64, big) == step_threads(SPLIT_MIN_HIDDEN, 0) == step_threads(7168, 1) == 4
    assert step_threads(64, big, requested=3) == 3 and step_threads(7168, 0, requested=2) == 2


@pytest.mark.parametrize("requested, small, big", [(0, 1, 4), (2, 2, 2)])
def test_a_loaded_shard_sets_each_steps_threads(tiny_official, four_cores, requested, small, big):
    model = load_shard(EngineOptions(model_path=str(tiny_official), cpu_threads=requested), SINGLE, "cpu")
    assert model.cfg.hidden_size < SPLIT_MIN_HIDDEN
    threads.for_step(PARALLEL_MIN_ATTENDED)
    assert torch.get_num_threads() == big
    threads.for_step(1)
    assert torch.get_num_threads() == small
    assert threads.describe() == ("1 per step, 4 for steps attending to >= 2^25 pairs" if requested == 0 else "2")
    assert native._threads(native.STREAM_MIN_BYTES) == big  # big native calls split over the same cores
    assert native._threads(native.STREAM_MIN_BYTES - 1) == 1


def test_the_runner_sets_threads_by_the_pairs_its_step_attends(tiny_model, four_cores, monkeypatch):
    seen = []
    monkeypatch.setattr(threads, "for_step", seen.append)
    runner = ModelRunner(tiny_model, CacheShape(tiny_model.cfg.min_page_size, 4, 4, 2))
    greedy = SamplingRow(temperature=0)
    runner.run([RunRequest(0, 0, [5, 6, 7, 8, 9], [0], [0], sampling=greedy),
                RunRequest(1, 0, [3, 4], [1], [1], sampling=greedy)])
    runner.run([RunRequest(0, 5, [10], [0], [0], sampling=greedy), RunRequest(1, 2, [11, 12], [1], [1], sampling=greedy)])
    assert seen == [5 * 5 + 2 * 2, 1 * 6 + 2 * 4]


def test_negative_thread_counts_are_refused():
    with pytest.raises(ValueError, match="cpu_threads must be >= 0"):
        EngineOptions(cpu_threads=-1).validate()
