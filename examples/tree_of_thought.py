"""Tree of thought: propose several plans in parallel forks of one shared prefix, score each
with `select`, and expand the best one.

    python examples/tree_of_thought.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

import banyan.frontend as sgl


@sgl.function
def tree_of_thought(s, problem, width=3):
    s += f"Problem: {problem}\n"
    forks = s.fork(width)  # the problem is computed once; the forks reuse its cached KV
    for i, f in enumerate(forks):
        f += f"Plan {i + 1}:" + sgl.gen("plan", max_tokens=24, stop="\n", temperature=0.9, seed=i)
        f += "\nIs this plan sound? Answer:" + sgl.select("verdict", [" yes", " no"])
    forks.join()
    plans = list(s["plan"])
    best = next((i for i, v in enumerate(s["verdict"]) if v == " yes"), 0)
    s += f"Chosen plan: {plans[best].strip()}\nSolution:" + sgl.gen("solution", max_tokens=48)


def main(backend: sgl.Backend) -> sgl.ProgramState:
    state = tree_of_thought.run(problem="Schedule three meetings in two rooms without overlap.", backend=backend)
    for plan, verdict in zip(state["plan"], state["verdict"]):
        print(f"plan:{plan!r} sound:{verdict.strip()}")
    print("solution:", state["solution"])
    return state


if __name__ == "__main__":
    from common import backend_from_args

    with backend_from_args(__doc__) as backend:
        main(backend)
