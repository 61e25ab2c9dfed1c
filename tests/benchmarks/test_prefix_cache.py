from banyan.benchmarks.prefix_cache import kv_footprint
from banyan.model.config import ModelConfig


def test_flash_footprint_matches_spec_formula():
    fp = kv_footprint(ModelConfig.preset("flash"))
    # spec §9.2: csa*(512*2/4 + 128*2/4) + hca*512*2/128 = 6880 B/token in bf16 ...
    entries = 21 * (512 * 2 / 4 + 128 * 2 / 4) + 20 * 512 * 2 / 128
    # ... and Banyan's fp32 CSA overlap snapshot (4 tokens x (kv, score) x (512 + 128) per 128-token
    # page) lives with the page's sliding-window KV, so a tombstoned window drops it too
    snapshots = 21 * 4 * 2 * (512 + 128) * 4 / 128
    assert fp["v4_bytes_per_token_window_tombstoned"] == entries
    assert fp["dense_bytes_per_token"] == 43 * 512 * 2
    assert fp["v4_bytes_per_token_window_resident"] == entries + snapshots + 43 * 512 * 2
