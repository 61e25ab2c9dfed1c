"""The `banyan` command line."""

from __future__ import annotations

import argparse
import sys

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_path", nargs="?", default=None,
                   help="V4 checkpoint directory (default: the embedded tiny model)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu")


def _resolve_model_path(path: str | None) -> str:
    from ..model.default import default_model_dir

    return path or str(default_model_dir())


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..model.generate import greedy_generate
    from ..model.loader import load_model
    from .tokenizer import load_tokenizer

    path = _resolve_model_path(args.model_path)
    model = load_model(path, dtype=getattr(torch, DTYPES[args.dtype]), device=args.device)
    tok = load_tokenizer(path)
    ids = [tok.bos_token_id] + tok.encode(args.prompt, add_special_tokens=False)
    out = greedy_generate(model, ids, args.max_new_tokens, stop_ids=(tok.eos_token_id,))
    print(tok.decode(out, skip_special_tokens=True))
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from ..model.make_tiny import main as make_tiny_main

    make_tiny_main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banyan", description="Serving runtime for the DeepSeek-V4 family")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="greedy completion of one prompt, in process")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.set_defaults(func=cmd_generate)
    tiny = sub.add_parser("make-tiny", help="write a random tiny V4 checkpoint (see python -m banyan.model.make_tiny -h)")
    tiny.add_argument("rest", nargs=argparse.REMAINDER)
    tiny.set_defaults(func=cmd_make_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
