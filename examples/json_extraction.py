"""JSON extraction: the answer is constrained by a JSON schema (xgrammar token masks on the
server), so it always parses and validates, even from a weak model.

    python examples/json_extraction.py [--url http://127.0.0.1:30000 | --openai http://127.0.0.1:30000/v1]
"""

from __future__ import annotations

import json

import banyan.frontend as sgl

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
    "required": ["name", "age", "languages"], "additionalProperties": False}


@sgl.function
def extract(s, text):
    s += sgl.system("Extract the person described by the user as JSON.")
    s += sgl.user(text)
    s += sgl.assistant(sgl.gen("person", max_tokens=120, json_schema=PERSON))


def main(backend: sgl.Backend) -> dict:
    state = extract.run(text="Ada Lovelace, 36, wrote in English and French.", backend=backend, temperature=0)
    person = json.loads(state["person"])
    print(person)
    return person


if __name__ == "__main__":
    from common import backend_from_args

    with backend_from_args(__doc__) as backend:
        main(backend)
