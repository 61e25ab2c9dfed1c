from banyan.runtime.tokenizer import SPECIAL_IDS, load_tokenizer
from banyan.tests.conftest import shared_dir

# docs/dsv4-spec.md §7.4, case 2
CASE_2_IDS = [0, 3476, 477, 260, 11502, 22896, 16, 128803, 19923, 128804, 128822, 23166, 1031, 3, 1730, 588, 342,
              1694, 440, 33, 1, 128803, 3085, 344, 270, 6102, 294, 8760, 33, 128804, 128821, 671, 3967, 20407, 943,
              270, 6102, 294, 8760, 16, 983, 344, 11111, 16, 128822, 671, 6102, 294, 8760, 344, 11111, 16, 1]


def test_special_token_ids():
    tok = load_tokenizer()
    named = {"bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>", "pad": "<｜▁pad▁｜>",
             "user": "<｜User｜>", "assistant": "<｜Assistant｜>", "think": "<think>", "end_think": "</think>",
             "dsml": "｜DSML｜", "latest_reminder": "<｜latest_reminder｜>"}
    for key, text in named.items():
        assert tok.convert_tokens_to_ids(text) == SPECIAL_IDS[key], key
        assert tok.encode(text, add_special_tokens=False) == [SPECIAL_IDS[key]]
    assert tok.bos_token_id == 0 and tok.eos_token_id == 1
    assert tok.encode("<tool_result>", add_special_tokens=False) == [30, 72461, 46148, 32]
    assert tok.encode("\n\n<｜DSML｜tool_calls>\n", add_special_tokens=False) == [271, 30, 128825, 72461, 4941,
                                                                                  12548, 1018]


def test_case_2_prompt_tokenises_like_the_reference():
    tok = load_tokenizer()
    text = (shared_dir() / "fixtures" / "encoding" / "test_output_2.txt").read_text(encoding="utf-8")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == CASE_2_IDS
    assert tok.decode(ids) == text
    assert len(tok) == 129280
