"""Few-shot QA: every question shares the same examples, so once one request has run, the
radix cache holds them and later requests compute only their question.

    python examples/few_shot_qa.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

import banyan.frontend as sgl

EXAMPLES = [("What is the capital of France?", "Paris"), ("What is the capital of Germany?", "Berlin"),
            ("What is the capital of Italy?", "Rome"), ("What is the capital of Spain?", "Madrid"),
            ("What is the capital of Canada?", "Ottawa"), ("What is the capital of Egypt?", "Cairo"),
            ("What is the capital of Chile?", "Santiago"), ("What is the capital of Norway?", "Oslo"),
            ("What is the capital of Vietnam?", "Hanoi"), ("What is the capital of Poland?", "Warsaw"),
            ("What is the capital of Ghana?", "Accra"), ("What is the capital of Greece?", "Athens")]


@sgl.function
def few_shot_qa(s, question):
    s += "Answer each question with one word.\n\n"
    for q, a in EXAMPLES:
        s += f"Q: {q}\nA: {a}\n\n"
    s += f"Q: {question}\nA:" + sgl.gen("answer", max_tokens=8, stop="\n")


def main(backend: sgl.Backend) -> list[sgl.ProgramState]:
    questions = ["What is the capital of Japan?", "What is the capital of Peru?", "What is the capital of Kenya?",
                 "What is the capital of Nepal?"]
    first = few_shot_qa.run(question=questions[0], backend=backend, temperature=0)  # fills the cache
    states = [first] + few_shot_qa.run_batch([{"question": q} for q in questions[1:]], backend=backend,
                                             temperature=0, progress_bar=True)
    for q, state in zip(questions, states):
        meta = state.get_meta_info("answer")
        print(f"{q} -> {state['answer'].strip()!r} ({meta['cached_tokens']}/{meta['prompt_tokens']} prompt tokens cached)")
    return states


if __name__ == "__main__":
    from common import backend_from_args

    with backend_from_args(__doc__) as backend:
        main(backend)
