"""Where refserver's decode time goes: Engine.generate in-process (no HTTP), timed by section.

    python -m benchmarks.engine_profile --dtype bfloat16 --threads 1 --max-tokens 128 \
        --spec none --spec ngram5 --spec mtp1 --spec hybrid31 --spec hybrid53 [--rounds 3]

`--spec` takes a preset name (see PRESETS) or FastDeploy `--speculative-config` JSON; repeat it
to compare configurations. All configurations share one loaded model and run in the same
process, interleaved round by round (config A, B, C, A, B, C, ...), so that a noisy shared
machine hurts them alike; the table reports the median round.

The engine's methods are wrapped with timers (CPU work is synchronous, so wall time is the
cost; on CUDA the numbers would need a synchronize and are not meaningful). Sections are
exclusive: time spent in a nested section counts only there.

- target fwd: `Transformer.forward` during verification steps;
- logits: final norm + tied output head on the target's hidden states;
- accept/emit: verification (argmax, acceptance), cuts, tokenizer decode, logprobs, sinks;
- mtp draft: `MTPDrafter.draft` (cache refresh + s chained head steps, incl. its output head);
- ngram ext: `NgramExtender.extend` (argument layout + the op or oracle);
- prefill: everything inside admitting a request (prompt forward, first token);
- other: the rest of `Engine.step` (input tensors, loop bookkeeping).

Per-step numbers divide by decode steps (target verification forwards); tok/s is generated
tokens over the whole generate() wall time, prefill included. Not a test: prints a table.

On a GPU (`--device cuda`) the section timers would only measure launches, so it reports the
host share instead: each configuration runs once under torch.profiler, GPU busy time = the sum
of its CUDA kernel and copy durations, host share = 1 - busy / wall (the part of a step in which
the GPU waits for the host). `--graphs` (a --graph-optimization-config JSON) and `--overlap` set
the engine the way the server flags do; the profiler's own per-op cost inflates the eager
host share a little, not the graphs'.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refserver.presets import SPEC_CONFIGS  # noqa: E402 (after the path set-up)

# refserver/presets.py's names, plus the short ones this tool has always taken.
PRESETS: dict[str, str | None] = {
    **SPEC_CONFIGS,
    "ngram5": SPEC_CONFIGS["ngram K=5"],
    "mtp1": SPEC_CONFIGS["mtp s=1"],
    "mtp3": SPEC_CONFIGS["mtp s=3"],
    "hybrid31": SPEC_CONFIGS["hybrid K=3 s=1"],
    "hybrid51": SPEC_CONFIGS["hybrid K=5 s=1"],
    "hybrid53": SPEC_CONFIGS["hybrid K=5 s=3"],
}
SECTIONS = ("target fwd", "logits", "accept/emit", "mtp draft", "ngram ext", "other")


@dataclass
class Timings:
    """Exclusive seconds per section for one generate() run."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: int = 0  # decode (verification) steps
    tokens: int = 0
    wall: float = 0.0
    _stack: list[list[Any]] = field(default_factory=list)  # [name, start, child seconds]

    def wrap(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = "prefill" if any(f[0] == "prefill" for f in self._stack) else name
            frame = [label, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                total = time.perf_counter() - frame[1]
                self.seconds[label] += total - frame[2]
                if self._stack:
                    self._stack[-1][2] += total

        return timed


def instrument(engine: Any, t: Timings) -> None:
    """Wrap the engine's parts with `t`'s timers (instance attributes; the classes are untouched)."""
    model = engine.model
    model.forward = t.wrap(type(model).forward.__get__(model), "target fwd")
    model.logits = t.wrap(type(model).logits.__get__(model), "logits")
    for name in ("_accept", "_take", "_deliver"):
        setattr(engine, name, t.wrap(getattr(type(engine), name).__get__(engine), "accept/emit"))
    engine._prefill = t.wrap(type(engine)._prefill.__get__(engine), "prefill")
    inner_verify = type(engine)._verify.__get__(engine)

    def verify(rows: list[Any]) -> Any:
        t.steps += bool(rows)
        return inner_verify(rows)

    engine._verify = verify
    engine.step = t.wrap(type(engine).step.__get__(engine), "other")
    if engine.mtp is not None:
        engine.mtp.draft = t.wrap(type(engine.mtp).draft.__get__(engine.mtp), "mtp draft")
    if engine.ngram is not None:
        engine.ngram.extend = t.wrap(type(engine.ngram).extend.__get__(engine.ngram), "ngram ext")


def uninstrument(engine: Any) -> None:
    for obj, names in (
        (engine.model, ("forward", "logits")),
        (engine, ("_accept", "_take", "_deliver", "_prefill", "_verify", "step")),
        (engine.mtp, ("draft",)),
        (engine.ngram, ("extend",)),
    ):
        for name in names:
            if obj is not None and name in vars(obj):
                delattr(obj, name)


def run_once(
    engine: Any, prompts: list[list[int]], max_tokens: int, concurrency: int = 1
) -> tuple[Timings, list]:
    """Generate greedily for `prompts`, `concurrency` requests at a time (all of a group are
    submitted together, so the engine batches them)."""
    from refserver.engine import Request
    from refserver.sampling import SamplingParams

    t = Timings()
    instrument(engine, t)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    outs: list[list] = [[] for _ in prompts]
    try:
        start = time.perf_counter()
        for g in range(0, len(prompts), concurrency):
            group = range(g, min(g + concurrency, len(prompts)))
            engine.generate([Request(prompts[i], params, outs[i].append) for i in group])
        t.wall = time.perf_counter() - start
    finally:
        uninstrument(engine)
    t.tokens = sum(len(o.token_ids) for out in outs for o in out)
    return t, [[tok for o in out for tok in o.token_ids] for out in outs]


def host_share(engine: Any, prompts: list[list[int]], max_tokens: int, concurrency: int) -> dict:
    """Per decode step: wall ms, GPU busy ms (kernels + copies, from torch.profiler) and the
    host share 1 - busy / wall, over one greedy generate() of `prompts`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        t, out = run_once(engine, prompts, max_tokens, concurrency)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    steps = [t.steps]
    busy_us = sum(e.self_device_time_total for e in prof.key_averages())
    n = max(steps[0], 1)
    return {
        "wall_ms": 1e3 * wall / n,
        "gpu_ms": 1e-3 * busy_us / n,
        "host_share": 1 - 1e-6 * busy_us / wall,
        "steps": steps[0],
        "tokens": sum(len(o) for o in out),
        "top_host_ops": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spec", action="append", help=f"preset {sorted(PRESETS)} or JSON")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3, help="held-out prompts per run")
    ap.add_argument("--kind", default="repetitive", choices=("repetitive", "open", "all"))
    ap.add_argument("--concurrency", type=int, default=1, help="requests batched together")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median reported")
    ap.add_argument("--mtp-head", default=None)
    ap.add_argument(
        "--mtp-draft-vocab",
        default=None,
        help="comma list of draft vocabulary sizes: every MTP config runs once per value, "
        "labelled config@vN (default: the engine's default)",
    )
    ap.add_argument("--mtp-token-rank", default=None, help="token rank for --mtp-draft-vocab")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: report the host share")
    ap.add_argument("--graphs", default=None, help="--graph-optimization-config JSON (CUDA)")
    ap.add_argument("--overlap", action="store_true", help="--enable-overlap-schedule")
    args = ap.parse_args(argv)
    if args.max_tokens < 1:
        ap.error(f"--max-tokens {args.max_tokens}: expected >= 1")
    if args.concurrency < 1:
        ap.error(f"--concurrency {args.concurrency}: expected >= 1")

    import torch

    from refserver.config import EngineConfig, GraphOptimizationConfig, SpeculativeConfig
    from refserver.engine import Engine
    from refserver.heldout import heldout_prompts
    from refserver.model import load_model

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tok = load_model(dtype=dtype, device=args.device)
    picked = [p for p in heldout_prompts() if args.kind in ("all", p["kind"])][: args.prompts]
    prompts = [tok.encode(tok.apply_chat_template(p["messages"])) for p in picked]
    try:
        vocabs = (
            [None]
            if args.mtp_draft_vocab is None
            else [int(v) for v in args.mtp_draft_vocab.split(",")]
        )
    except ValueError:
        ap.error(f"--mtp-draft-vocab {args.mtp_draft_vocab!r}: expected integers like 0,4096")

    engines = {}
    for name in args.spec or ["none", "ngram5", "mtp1", "hybrid31", "hybrid53"]:
        if name not in PRESETS and not name.lstrip().startswith("{"):
            ap.error(f"--spec {name!r}: neither a preset ({', '.join(PRESETS)}) nor JSON")
        spec = SpeculativeConfig.from_json(PRESETS.get(name, name))
        for vocab in vocabs if spec.mtp_steps else [None]:
            config = EngineConfig(
                speculative=spec,
                dtype=args.dtype,
                max_num_seqs=args.concurrency,
                mtp_head_path=args.mtp_head,
                mtp_draft_vocab=vocab,
                mtp_token_rank_path=args.mtp_token_rank,
                device=args.device,
                graph_optimization=GraphOptimizationConfig.from_json(args.graphs),
                enable_overlap_schedule=args.overlap,
            )
            label = name if vocab is None or len(vocabs) == 1 else f"{name}@v{vocab}"
            engines[label] = Engine(config, model, tok)
    specs = list(engines)
    for engine in engines.values():  # warm-up (allocator, oneDNN primitives, graph capture)
        run_once(engine, prompts[:1], 8)
        if args.concurrency > 1:
            run_once(engine, prompts[: args.concurrency], 8, args.concurrency)
    if args.device.startswith("cuda"):
        print(
            f"\nhost share per decode step: {torch.cuda.get_device_name()}, {args.dtype}, "
            f"{len(prompts)} {args.kind} prompt(s), max_tokens {args.max_tokens}, concurrency "
            f"{args.concurrency}, graphs {args.graphs or 'off'}, overlap "
            f"{'on' if args.overlap else 'off'}\n"
        )
        tops = {}
        print("| config | steps | wall ms/step | GPU busy ms/step | host share | tok/step |")
        print("|---|---|---|---|---|---|")
        for name, engine in engines.items():
            h = host_share(engine, prompts, args.max_tokens, args.concurrency)
            print(
                f"| {name} | {h['steps']} | {h['wall_ms']:.2f} | {h['gpu_ms']:.2f} | "
                f"{100 * h['host_share']:.0f}% | {h['tokens'] / max(h['steps'], 1):.2f} |"
            )
            tops[name] = h["top_host_ops"]
        for name, table in tops.items():
            print(f"\n{name}: where the host's time goes (torch.profiler, self CPU time)\n{table}")
        return 0

    runs: dict[str, list[Timings]] = defaultdict(list)
    outputs: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            t, out = run_once(engine, prompts, args.max_tokens, args.concurrency)
            runs[name].append(t)
            outputs[name] = out

    print(
        f"\nengine profile: {args.dtype}, {args.threads} thread(s), {len(prompts)} {args.kind} "
        f"prompt(s), max_tokens {args.max_tokens}, concurrency {args.concurrency}, median of {args.rounds} "
        f"interleaved round(s); ms per decode step (prefill: ms per request)\n"
    )
    head = [
        "config",
        "draft vocab",
        *SECTIONS,
        "step",
        "prefill",
        "tok/step",
        "ms/tok",
        "tok/s",
        "same as 1st",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    ref = outputs[specs[0]]
    for name in specs:
        med = sorted(runs[name], key=lambda t: t.wall)[len(runs[name]) // 2]
        per_step = [1e3 * med.seconds.get(s, 0.0) / med.steps for s in SECTIONS]
        step_ms = sum(per_step)
        tok_s = statistics.median(t.tokens / t.wall for t in runs[name])
        mtp = engines[name].mtp
        cells = [
            name,
            str(mtp.head.draft_vocab_size) if mtp is not None else "-",
            *(f"{v:.1f}" for v in per_step),
            f"{step_ms:.1f}",
            f"{1e3 * med.seconds.get('prefill', 0.0) / len(prompts):.0f}",
            f"{med.tokens / med.steps:.2f}",
            f"{1e3 * med.wall / med.tokens:.1f}",
            f"{tok_s:.2f}",
            f"{sum(a == b for a, b in zip(outputs[name], ref, strict=True))}/{len(ref)}",
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
