"""The intra-op thread count a model process runs with on CPU."""

import pytest
import torch

from banyan.model.parallel import SINGLE
from banyan.model.threads import SPLIT_MIN_HIDDEN, cpu_threads
from banyan.runtime.options import EngineOptions
from banyan.runtime.rank_worker import load_shard


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_narrow_models_run_on_one_thread_wide_ones_on_all_unless_told(restore_threads):
    assert cpu_threads(64) == cpu_threads(SPLIT_MIN_HIDDEN - 1) == 1
    assert cpu_threads(SPLIT_MIN_HIDDEN) == cpu_threads(7168) == restore_threads
    assert cpu_threads(64, requested=3) == cpu_threads(7168, requested=3) == 3


@pytest.mark.parametrize("requested, expected", [(0, 1), (2, 2)])
def test_loading_a_shard_sets_the_process_threads(tiny_official, restore_threads, requested, expected):
    torch.set_num_threads(2)
    model = load_shard(EngineOptions(model_path=str(tiny_official), cpu_threads=requested), SINGLE, "cpu")
    assert model.cfg.hidden_size < SPLIT_MIN_HIDDEN
    assert torch.get_num_threads() == expected


def test_negative_thread_counts_are_refused():
    with pytest.raises(ValueError, match="cpu_threads must be >= 0"):
        EngineOptions(cpu_threads=-1).validate()
