"""Self-consistency: sample N thinking branches from one shared (cached) prompt and keep the
majority answer, or let a judge program pick one.

    python examples/self_consistency.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

import banyan.frontend as sgl


@sgl.function
def judge(s, candidates):
    s += sgl.user("Which answer is best?\n" + "\n".join(f"- {c}" for c in candidates))
    s += sgl.assistant(sgl.select("best", candidates))


@sgl.function
def solve(s, question, n=5, use_judge=False):
    s += sgl.user(question + " Answer with a number only.")
    sgl.self_consistency(s, n, "answer", max_tokens=6, max_thinking_tokens=64, dtype=int, seed=0,
                         judge=judge if use_judge else None)


def main(backend: sgl.Backend) -> sgl.ProgramState:
    state = solve.run(question="A train covers 60 km in 40 minutes. How many km does it cover in an hour?",
                      backend=backend)
    print("candidates:", state["answer_candidates"])
    print("vote:", state["answer"])
    return state


if __name__ == "__main__":
    from common import backend_from_args

    with backend_from_args(__doc__) as backend:
        main(backend)
