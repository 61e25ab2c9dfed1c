"""Interpreter semantics on a scripted backend: rendering, variables, forks, batches, streaming,
errors. No model runs here, so the expected texts are exact."""

from __future__ import annotations

import pytest

import banyan.frontend as sgl
from banyan.runtime.encoding import encode_messages
from banyan.runtime.encoding.tokens import ASSISTANT, EOS, THINK_CLOSE, THINK_OPEN, USER

from .fakes import FakeBackend


def test_free_text_program_sends_its_text_as_prompt(fake):
    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\nA:" + sgl.gen("answer", stop="\n")
        s += "\nDone."

    state = qa.run(question="Why?")
    assert fake.prompts == ["Q: Why?\nA:"]
    assert state["answer"] == "answer"
    assert state.text() == "Q: Why?\nA:answer\nDone."
    assert state.get_meta_info("answer")["finish_reason"]["type"] == "stop"


def test_role_blocks_render_exactly_as_encode_messages(fake):
    @sgl.function
    def chat(s):
        s += sgl.system("Be brief.")
        s += sgl.user("Hi")
        s += sgl.assistant(sgl.gen("first"))
        with s.user():
            s += "Again"
        s += sgl.assistant_begin()
        s += "Sure: " + sgl.gen("second")
        s += sgl.assistant_end()
        s += sgl.user_begin() + "Bye" + sgl.user_end()

    state = chat.run()
    messages = state.messages()
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "answer"}, {"role": "user", "content": "Again"},
                        {"role": "assistant", "content": "Sure: answer"}, {"role": "user", "content": "Bye"}]
    assert state.text() == encode_messages(messages)
    # each gen continued the V4 prompt of the conversation before it
    assert fake.prompts[0] == encode_messages(messages[:2])
    assert fake.prompts[0].endswith(USER + "Hi" + ASSISTANT + THINK_CLOSE)
    assert fake.prompts[1] == encode_messages(messages[:4]) + "Sure: "


def test_open_user_block_has_no_assistant_header(fake):
    @sgl.function
    def ask(s):
        s += sgl.user("Name a color: " + sgl.gen("color", max_tokens=4))

    ask.run()
    assert fake.prompts == [encode_messages([{"role": "user", "content": "Name a color: "}]).removesuffix(
        ASSISTANT + THINK_CLOSE)]


def test_thinking_gen_reasons_then_answers(fake):
    @sgl.function
    def think(s):
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("x", thinking=True, max_tokens=8))

    state = think.run()
    header = encode_messages([{"role": "user", "content": "Q"}], "thinking")
    assert header.endswith(ASSISTANT + THINK_OPEN)
    assert fake.prompts == [header, header + "thought" + THINK_CLOSE]
    assert (state["x"], state["x_reasoning"]) == ("answer", "thought")
    assert state.messages()[-1] == {"role": "assistant", "content": "answer", "reasoning_content": "thought"}
    assert state.text() == encode_messages(state.messages(), "thinking") == header + "thought</think>answer" + EOS


def test_next_user_turn_drops_old_reasoning_and_max_effort_adds_preamble(fake):
    @sgl.function
    def two_turns(s):
        s += sgl.user("Q1")
        s += sgl.assistant(sgl.gen("a", thinking="max"))
        s += sgl.user("Q2")
        s += sgl.assistant(sgl.gen("b"))

    state = two_turns.run()
    assert fake.prompts[0] == encode_messages([{"role": "user", "content": "Q1"}], "thinking", reasoning_effort="max")
    assert fake.prompts[0].startswith("<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum")
    assert fake.prompts[2] == encode_messages(state.messages()[:3])  # non-think: the reasoning is gone
    assert "thought" not in fake.prompts[2]


def test_reasoning_cut_at_its_budget_is_closed_and_the_answer_follows(fake):
    def reply(prompt, params):
        if params.stop == (THINK_CLOSE,):
            assert params.max_new_tokens == 3 and params.json_schema is None  # no grammar on the reasoning
            return "long", {"type": "length"}
        assert params.json_schema is not None and params.max_new_tokens == 9
        return '{"a": 1}'

    fake.reply = reply

    @sgl.function
    def think(s):
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("x", thinking=True, max_thinking_tokens=3, max_tokens=9,
                                   json_schema={"type": "object"}))

    state = think.run()
    assert fake.prompts[1].endswith(THINK_OPEN + "long" + THINK_CLOSE)
    assert (state["x_reasoning"], state["x"]) == ("long", '{"a": 1}')
    assert state.get_meta_info("x")["completion_tokens"] == len("long") + len('{"a": 1}')


def test_reasoning_that_ends_the_turn_leaves_no_answer(fake):
    fake.reply = lambda prompt, params: "all thought"  # ends with EOS inside the reasoning

    @sgl.function
    def think(s):
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("x", thinking=True))

    state = think.run()
    assert (state["x_reasoning"], state["x"]) == ("all thought", "")
    assert len(fake.prompts) == 1


def test_thinking_and_tools_need_an_assistant_turn(fake):
    @sgl.function
    def raw(s):
        s += "Q:" + sgl.gen("x", thinking=True)

    with pytest.raises(ValueError, match="must start an assistant block"):
        raw.run()

    @sgl.function
    def after_text(s):
        s += sgl.user("Q")
        s += sgl.assistant("Answer: " + sgl.gen("x", tools=[len]))

    with pytest.raises(ValueError, match="must start an assistant block"):
        after_text.run()


def test_free_text_and_role_blocks_do_not_mix(fake):
    @sgl.function
    def text_then_roles(s):
        s += "preamble"
        s += sgl.user("Q")

    @sgl.function
    def roles_then_text(s):
        s += sgl.user("Q")
        s += "stray"

    with pytest.raises(ValueError, match="role blocks after free text"):
        text_then_roles.run()
    with pytest.raises(ValueError, match="free text after role blocks"):
        roles_then_text.run()


def test_errors_reach_the_program_and_stop_the_state(fake):
    def reply(prompt, params):
        raise sgl.BackendError("server says no")

    fake.reply = reply

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a")
        s += "y" + sgl.gen("b")
        s["seen"] = s["a"]  # raises here

    with pytest.raises(sgl.BackendError, match="server says no"):
        prog.run()
    assert len(fake.prompts) == 1


def test_gen_argument_checks():
    with pytest.raises(sgl.UnsupportedFeatureError, match="fork"):
        sgl.gen("x", n=2)
    with pytest.raises(ValueError, match="temperature"):
        sgl.select("x", ["a", "b"], temperature=0.5)
    with pytest.raises(ValueError, match="tool_choice"):
        sgl.gen("x", tools=[len], tool_choice="missing")
    with pytest.raises(ValueError, match="thinking"):
        sgl.gen("x", thinking="low")
    with pytest.raises(RuntimeError, match="no backend"):
        sgl.function(lambda s: None).run()


def test_dtype_and_sampling_defaults_reach_the_backend(fake):
    seen = []
    fake.reply = lambda prompt, params: seen.append(params) or "7"

    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen_int("n") + " f=" + sgl.gen("f", dtype=float, temperature=0.5, stop="!")

    state = prog.run(temperature=0, max_new_tokens=5, top_k=3)
    assert int(state["n"]) == 7
    assert seen[0].regex == sgl.REGEX_INT and seen[0].stop == (" ", "\n")
    assert (seen[0].temperature, seen[0].max_new_tokens, seen[0].top_k) == (0, 5, 3)
    assert seen[1].regex == sgl.REGEX_FLOAT and seen[1].stop == ("!", " ", "\n") and seen[1].temperature == 0.5


def test_var_scope_and_state_variables(fake):
    @sgl.function
    def prog(s):
        with s.var_scope("block"):
            s += "a" + sgl.gen("g") + "b"
        s["custom"] = 5

    state = prog.run()
    assert state["block"] == "aanswerb" and state["custom"] == 5 and "g" in state and "zz" not in state


def test_fork_gather_and_concatenate(fake):
    fake.reply = lambda prompt, params: f"<{prompt[-1]}>"

    @sgl.function
    def tree(s):
        s += "root:"
        forks = s.fork(3)
        forks += lambda i: str(i)
        forks += sgl.gen("leaf")
        texts = [f["leaf"] for f in forks]
        forks.join()
        s += "|".join(texts) + ";"
        both = s.fork(2)
        for i, f in enumerate(both):
            f += ["x", "y"][i]
        both.join("concate_and_append")
        last = s.fork(1)[0]
        last += "!"
        s += last

    state = tree.run()
    assert state["leaf"] == ["<0>", "<1>", "<2>"]  # gathered by join()
    assert state.text() == "root:<0>|<1>|<2>;xy!"
    assert fake.cached == ["root:", "root:<0>|<1>|<2>;"]  # the shared prefix, cached before n > 1 forks


def test_forks_in_a_chat_turn(fake):
    fake.reply = lambda prompt, params: "ans"

    @sgl.function
    def branches(s):
        s += sgl.user("Q")
        with s.assistant():
            forks = s.fork(2)
            forks += sgl.gen("x")
            forks.join("concate_and_append")

    state = branches.run()
    assert state.messages()[-1] == {"role": "assistant", "content": "ansans"}


def test_run_batch_threads_progress_and_positional_arguments(fake, capsys):
    @sgl.function
    def echo(s, word, suffix="."):
        s += word + suffix + sgl.gen("g")

    states = echo.run_batch([{"word": "a"}, ["b", "!"], {"word": "c"}], num_threads=2, progress_bar=True)
    assert [st.text() for st in states] == ["a.answer", "b!answer", "c.answer"]
    assert "3/3" in capsys.readouterr().err
    lazy = echo.run_batch([["d"], ["e"]], generator_style=True, temperature=0)
    assert [st.text() for st in lazy] == ["d.answer", "e.answer"]
    with pytest.raises(TypeError, match="unknown sampling"):
        echo.run_batch([["x"]], bogus=1)


def test_bind_fixes_arguments(fake):
    @sgl.function
    def greet(s, name, punct):
        s += name + punct

    assert greet.bind(punct="!").run(name="Ann").text() == "Ann!"
    with pytest.raises(TypeError):
        greet.bind(nope=1)


def test_streaming_text_iter(fake):
    fake.reply = lambda prompt, params: ("thought", {"type": "stop", "matched": THINK_CLOSE}) \
        if params.stop == (THINK_CLOSE,) else "abcdefgh"

    @sgl.function
    def prog(s):
        s += sgl.user("Q")
        s += sgl.assistant(sgl.gen("x", thinking=True))

    state = prog.run(stream=True)
    pieces = list(state.text_iter("x"))
    assert "".join(pieces) == "abcdefgh" and len(pieces) > 1
    assert "".join(prog.run(stream=True).text_iter("x_reasoning")) == "thought"
    streamed = prog.run(stream=True)
    assert "".join(streamed.text_iter()) == streamed.text()
    assert list(prog.run().text_iter("x")) == ["abcdefgh"]  # not streamed: the whole value


def test_streaming_surfaces_errors(fake):
    @sgl.function
    def broken(s):
        s += "a" + sgl.gen("x")
        raise KeyError("in the program")

    state = broken.run(stream=True)
    with pytest.raises(KeyError, match="in the program"):
        list(state.text_iter())


def test_select_methods_on_known_logprobs(fake):
    @sgl.function
    def pick(s, method):
        s += "Answer:" + sgl.select("x", [" yes", " no", " false"], choices_method=method)

    for method in (sgl.token_length_normalized, sgl.greedy_token_selection, sgl.unconditional_likelihood_normalized):
        state = pick.run(method=method)
        meta = state.get_meta_info("x")
        prompt = list(b"Answer:")
        expected = []
        for choice in (" yes", " no", " false"):
            tokens = list(choice.encode())
            expected.append([fake.logprob(t, len(prompt) + i) for i, t in enumerate(tokens)])
        assert [[tok[0] for tok in option] for option in meta["input_token_logprobs"]] == expected
        means = [sum(lps) / len(lps) for lps in expected]
        assert meta["normalized_prompt_logprobs"] == pytest.approx(means)
        assert state.text() == "Answer:" + state["x"]
    # the three methods disagree on these numbers (worked out by hand), which tells them apart
    assert pick.run(method=sgl.token_length_normalized)["x"] == " yes"  # best mean: -0.8
    assert pick.run(method=sgl.greedy_token_selection)["x"] == " false"  # first tokens tie, best second token
    assert pick.run(method=sgl.unconditional_likelihood_normalized)["x"] == " no"
    assert fake.cached  # the prompt is cached before the choices are scored


def test_gen_with_choices_is_a_select(fake):
    @sgl.function
    def pick(s):
        s += "Answer:" + sgl.gen("x", choices=[" yes", " no"])

    assert pick.run()["x"] in (" yes", " no")


def test_majority_vote_and_self_consistency(fake):
    assert sgl.majority_vote(["a ", "b", " a", "b"]) == "a "
    assert sgl.majority_vote(["x=1", "y=2", "z=2"], key=lambda a: a[-1]) == "y=2"
    answers = iter(["4", "5", " 4"])
    fake.reply = lambda prompt, params: ("thought", {"type": "stop", "matched": THINK_CLOSE}) \
        if params.stop == (THINK_CLOSE,) else next(answers)

    @sgl.function
    def vote(s):
        s += sgl.user("2+2?")
        with s.assistant():
            sgl.self_consistency(s, 3, "answer", seed=10)

    state = vote.run()
    assert sorted(state["answer_candidates"]) == [" 4", "4", "5"]
    assert state["answer"] in ("4", " 4") and state.messages()[-1]["content"] == state["answer"]


def test_self_consistency_with_a_judge_program(fake):
    fake.reply = lambda prompt, params: ("t", {"type": "stop", "matched": THINK_CLOSE}) \
        if params.stop == (THINK_CLOSE,) else f"cand{len(fake.prompts)}"

    @sgl.function
    def judge(s, candidates):
        s += "Best answer:" + sgl.select("best", choices=candidates)

    @sgl.function
    def solve(s):
        s += sgl.user("Q")
        sgl.self_consistency(s, 2, "answer", judge=judge)

    state = solve.run()
    assert state["answer"] in state["answer_candidates"]
    assert state.messages()[-1] == {"role": "assistant", "content": state["answer"]}


def test_backend_surface_on_a_plain_backend():
    backend = FakeBackend()
    assert sgl.flush_cache(backend) is False and sgl.get_server_info(backend) is None
    assert sgl.flush_cache() is False and sgl.get_server_info() is None
