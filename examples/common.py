"""Backend choice shared by the examples: `--url` for a running `banyan serve` (native API),
`--openai URL` for any OpenAI-compatible server, and otherwise an in-process engine on
`--model` (the embedded tiny model by default: it runs anywhere, but its answers are noise)."""

from __future__ import annotations

import argparse

import banyan.frontend as sgl


def backend_from_args(description: str) -> sgl.Backend:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="a Banyan server, e.g. http://127.0.0.1:30000")
    parser.add_argument("--openai", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:30000/v1")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="checkpoint for the in-process engine")
    args = parser.parse_args()
    if args.url:
        return sgl.RuntimeEndpoint(args.url, api_key=args.api_key)
    if args.openai:
        return sgl.OpenAI(args.openai, api_key=args.api_key)
    return sgl.LocalEngine(args.model)
