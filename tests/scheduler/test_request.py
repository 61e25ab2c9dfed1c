from banyan.scheduler.request import Request
from banyan.scheduler.sampling_params import SamplingParams


def test_token_ranges_equal_slices_of_the_whole_sequence():
    req = Request("r", [11, 12, 13, 14], SamplingParams(), output_ids=[21, 22, 23])
    seq = req.seq
    assert req.num_tokens == len(seq) == 7
    for start in range(len(seq) + 1):
        for stop in range(start, len(seq) + 1):
            assert req.tokens(start, stop) == seq[start:stop], (start, stop)
