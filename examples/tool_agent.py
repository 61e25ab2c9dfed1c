"""A tool-using agent with thinking: the model reasons, calls Python functions through V4's DSML
tool calls, reads their results (`<tool_result>`), and answers.

    python examples/tool_agent.py [--url http://127.0.0.1:30000]

It bounds the reasoning with `max_thinking_tokens`, which the OpenAI backend cannot express
(the chat API has one budget for reasoning and answer): with `--openai` it stops with an
error naming that feature.
"""

from __future__ import annotations

from typing import Annotated, Literal

import banyan.frontend as sgl


def get_weather(city: Annotated[str, "the city name"], unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """The current weather in a city."""
    return {"city": city, "temperature": 21 if unit == "celsius" else 70, "unit": unit, "sky": "clear"}


def convert_currency(amount: Annotated[str, {"pattern": "^[0-9]{1,9}([.][0-9]{1,2})?$"}],
                     source: Annotated[str, {"pattern": "^[A-Z]{3}$"}],
                     target: Annotated[str, {"pattern": "^[A-Z]{3}$"}]) -> float:
    """Convert an amount (a decimal string, as money usually travels) between two ISO currencies."""
    rates = {"EUR": 1.0, "USD": 1.1, "JPY": 160.0}
    return round(float(amount) / rates[source] * rates[target], 2)


@sgl.function
def agent(s, request, rounds=3):
    s += sgl.system("You are a travel assistant. Use the tools when they help.")
    s += sgl.user(request)
    s += sgl.assistant(sgl.gen("reply", max_tokens=400, thinking=True, max_thinking_tokens=256,
                               tools=[get_weather, convert_currency],
                               tool_choice="required", max_tool_rounds=rounds))


def main(backend: sgl.Backend, rounds: int = 3) -> sgl.ProgramState:
    state = agent.run(request="I fly to Lisbon tomorrow with 200 EUR. Weather, and how much is that in USD?",
                      rounds=rounds, backend=backend, temperature=0)
    for i, round_ in enumerate(state.get_meta_info("reply")["tool_rounds"]):
        for call in round_:
            print(f"round {i + 1}: {call['name']}({call['arguments']}) -> {call['result']}")
    print("reasoning:", state["reply_reasoning"][:200])
    print("reply:", state["reply"])
    return state


if __name__ == "__main__":
    from common import backend_from_args

    with backend_from_args(__doc__) as backend:
        main(backend)
