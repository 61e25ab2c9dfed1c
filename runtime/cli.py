"""The `banyan` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..model.hub import ModelNotFoundError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
V4_PARSERS = ("deepseek_v4", "deepseek-v4", "deepseekv4")  # vLLM's and SGLang's names for V4's parsers


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_path", nargs="?", default=None,
                   help="V4 checkpoint directory or a Hugging Face Hub id in the local cache, e.g. "
                        "deepseek-ai/DeepSeek-V4-Flash (default: the embedded tiny model)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--weight-format", choices=["auto", "native", "dequant"], default="auto",
                   help="keep FP8/FP4 weights as stored (native) or dense (dequant); auto: native on CUDA, "
                        "dequant on CPU")


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..model.generate import greedy_generate
    from ..model.hub import resolve_model_path
    from ..model.loader import load_model
    from .options import EngineOptions
    from .tokenizer import load_tokenizer

    path = resolve_model_path(args.model_path)
    weight_format = EngineOptions(device=args.device, weight_format=args.weight_format).resolved_weight_format()
    model = load_model(path, dtype=getattr(torch, DTYPES[args.dtype]), device=args.device,
                       weight_format=weight_format)
    tok = load_tokenizer(path)
    ids = [tok.bos_token_id] + tok.encode(args.prompt, add_special_tokens=False)
    out = greedy_generate(model, ids, args.max_new_tokens, stop_ids=(tok.eos_token_id,))
    print(tok.decode(out, skip_special_tokens=True))
    return 0


def _engine_flags(args: argparse.Namespace) -> None:
    """Fold the other engines' spellings into ours: `--model-path`, and the parser flags (no-ops)."""
    if args.model_path_flag is not None:
        if args.model_path is not None and args.model_path != args.model_path_flag:
            raise SystemExit(f"banyan: error: MODEL_PATH {args.model_path!r} and --model-path "
                             f"{args.model_path_flag!r} disagree")
        args.model_path = args.model_path_flag
    for flag in ("reasoning_parser", "tool_call_parser"):
        if getattr(args, flag) is not None:
            logging.getLogger("banyan.server").warning(
                "--%s %s has no effect: DeepSeek-V4 reasoning and tool-call parsing is built in",
                flag.replace("_", "-"), getattr(args, flag))


def cmd_serve(args: argparse.Namespace) -> int:
    _engine_flags(args)
    from ..model.hub import is_hub_id, resolve_model_path
    from .options import EngineOptions
    from .server.launch import serve
    from .server.settings import ServerSettings

    options = EngineOptions(
        model_path=resolve_model_path(args.model_path), dtype=DTYPES[args.dtype], device=args.device,
        cpu_threads=args.cpu_threads,
        weight_format=args.weight_format, kv_cache_dtype=args.kv_cache_dtype,
        page_size=args.page_size, chunked_prefill_size=args.chunked_prefill_size,
        schedule_policy=args.schedule_policy, max_running_requests=args.max_running_requests,
        kv_cache_bytes=int(args.kv_cache_gb * (1 << 30)), mem_fraction=args.mem_fraction,
        enable_prefix_cache=not args.disable_radix_cache, max_model_len=args.max_model_len,
        swa_fraction=args.swa_fraction, prefill_waiting_share=args.prefill_waiting_share,
        speculative_algorithm=args.speculative_algorithm,
        speculative_num_draft_tokens=args.speculative_num_draft_tokens,
        watchdog_timeout=args.watchdog_timeout, grammar_compile_timeout=args.grammar_compile_timeout,
        tp_size=args.tp_size, ep_size=args.ep_size, dp_size=args.dp_size, nnodes=args.nnodes,
        node_rank=args.node_rank, dist_init_addr=args.dist_init_addr)
    options.validate()
    if options.node_rank > 0:  # a headless node: its ranks only, no HTTP server
        from .rank_worker import serve_headless

        return serve_headless(options)
    hub_id = args.model_path if args.model_path and is_hub_id(args.model_path) else None
    settings = ServerSettings(host=args.host, port=args.port, served_model_name=args.served_model_name or hub_id,
                              api_key=args.api_key, max_queued_requests=args.max_queued_requests,
                              default_thinking=args.default_thinking, max_model_len=args.max_model_len,
                              log_level=args.log_level, max_request_bytes=args.max_request_bytes,
                              shutdown_timeout=args.shutdown_timeout)
    return serve(options, settings)


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--model-path", "--model", dest="model_path_flag", default=None, metavar="MODEL_PATH",
                   help="the model, as SGLang and vLLM spell it (instead of the positional MODEL_PATH)")
    for flag in ("--reasoning-parser", "--tool-call-parser"):
        p.add_argument(flag, choices=V4_PARSERS, default=None,
                       help="accepted for SGLang/vLLM command lines; V4 reasoning and tool-call parsing is built in")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--served-model-name", default=None,
                   help="model id clients use (default: the hub id, else the directory name)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length limit (default: what the KV pools hold for one request)")
    p.add_argument("--chunked-prefill-size", type=int, default=512)
    p.add_argument("--page-size", type=int, default=None, help="tokens per KV page (multiple of 128)")
    p.add_argument("--schedule-policy", choices=["fcfs", "lpm"], default="fcfs")
    p.add_argument("--max-running-requests", type=int, default=32)
    p.add_argument("--max-queued-requests", type=int, default=256,
                   help="requests waiting beyond the running ones before the server answers 503")
    p.add_argument("--kv-cache-gb", type=float, default=0.25, help="KV pool budget on CPU, GiB")
    p.add_argument("--mem-fraction", type=float, default=0.85, help="fraction of free GPU memory for the KV pools")
    p.add_argument("--disable-radix-cache", action="store_true", help="turn the prefix cache off")
    p.add_argument("--cpu-threads", type=int, default=0,
                   help="intra-op threads of the model process on CPU (default 0: one for models with a hidden "
                        "size under 1024, whose ops are too small to split, else one per core)")
    p.add_argument("--kv-cache-dtype", choices=["auto", "bfloat16", "fp8_e4m3"], default="auto",
                   help="KV pool storage: auto (the model dtype), bfloat16, or fp8_e4m3 (448 e4m3 dims with a "
                        "power-of-two scale per 64 + 64 bf16 RoPE dims, 584 B per entry; FP8 indexer keys)")
    p.add_argument("--swa-fraction", type=float, default=1.0,
                   help="sliding-window pages per compressed page; below 1 trades resume points for capacity")
    p.add_argument("--prefill-waiting-share", type=float, default=0.25,
                   help="share of the per-step prefill budget a long prompt leaves to newer requests")
    p.add_argument("--speculative-algorithm", type=str.lower, choices=["mtp", "nextn", "eagle"], default=None,
                   help="speculative decoding with the checkpoint's MTP layer (NEXTN / EAGLE are aliases)")
    p.add_argument("--speculative-num-draft-tokens", type=int, default=2,
                   help="drafts verified per step with --speculative-algorithm (1-4)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--default-thinking", action="store_true",
                   help="chat requests that do not choose a reasoning mode use thinking mode")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--max-request-bytes", type=int, default=None,
                   help="request body limit; larger bodies get 413 (default: 32 bytes per token of context + 1 MiB)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight requests may take to finish before they are aborted")
    p.add_argument("--watchdog-timeout", type=float, default=300.0,
                   help="a model step running longer than this many seconds makes the server exit non-zero")
    p.add_argument("--tp-size", "--tp", "--tensor-parallel-size", dest="tp_size", type=int, default=1,
                   help="tensor-parallel ranks: attention heads, output groups, vocabulary and expert columns split")
    p.add_argument("--ep-size", "--ep", "--expert-parallel-size", dest="ep_size", type=int, default=1,
                   help="expert-parallel ranks (1 or the world size): routed experts partitioned, all-to-all "
                        "dispatch")
    p.add_argument("--dp-size", "--dp", "--data-parallel-size", dest="dp_size", type=int, default=1,
                   help="data-parallel attention ranks (with --ep N, tp 1, one node): a scheduler, pools and "
                        "prefix cache per rank, MoE over all ranks")
    p.add_argument("--nnodes", type=int, default=1, help="nodes the ranks spread over")
    p.add_argument("--node-rank", type=int, default=0,
                   help="this node's index; nodes other than 0 run their ranks headless (no HTTP server)")
    p.add_argument("--dist-init-addr", default=None, metavar="HOST:PORT",
                   help="rendezvous address of node 0 (required with --nnodes > 1)")
    p.add_argument("--grammar-compile-timeout", type=float, default=10.0,
                   help="seconds a response_format / regex / tool grammar may take to compile before its request "
                        "gets 400")


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from ..model.make_tiny import main as make_tiny_main

    make_tiny_main(args.rest)
    return 0


def cmd_bench(argv: list[str]) -> int:
    from ..benchmarks.cli import main as bench_main

    return bench_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banyan", description="Serving runtime for the DeepSeek-V4 family")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="greedy completion of one prompt, in process")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.set_defaults(func=cmd_generate)
    srv = sub.add_parser("serve", help="OpenAI-compatible and SGLang-native HTTP server")
    _add_serve_args(srv)
    srv.set_defaults(func=cmd_serve)
    tiny = sub.add_parser("make-tiny", help="write a random tiny V4 checkpoint (see python -m banyan.model.make_tiny -h)")
    tiny.add_argument("rest", nargs=argparse.REMAINDER)
    tiny.set_defaults(func=cmd_make_tiny)
    # listed for `banyan -h` only: main() hands everything after `bench` to the benchmarks' own parser
    sub.add_parser("bench", help="benchmarks: serve, offline, programs, gpu (see banyan bench -h)", add_help=False)
    return parser


def _run(command, arg) -> int:
    """Run a command; a model that cannot be found is a one-line error, not a traceback."""
    try:
        return command(arg)
    except ModelNotFoundError as exc:
        print(f"banyan: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # before torch loads (nothing above imports it): spin-waiting OpenMP threads stall whenever
    # another process wakes on their cores, e.g. the in-process HF baseline of `bench offline`
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if argv[:1] == ["bench"]:  # its own parser takes everything after it, `-h` included
        return _run(cmd_bench, argv[1:])
    args = build_parser().parse_args(argv)
    return _run(args.func, args)


def launch_server(argv: list[str] | None = None) -> int:
    """`python -m banyan.launch_server`: SGLang's launch command, the same server and flags as `banyan serve`."""
    parser = argparse.ArgumentParser(prog="python -m banyan.launch_server",
                                     description="The Banyan server, as `banyan serve` (SGLang-style entry point)")
    _add_serve_args(parser)
    return _run(cmd_serve, parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
