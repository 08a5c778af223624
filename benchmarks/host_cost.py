"""The engine's host cost per decode step and per row, apart from the device work of its phases.

    python -m benchmarks.host_cost [--device cpu] [--spec none --spec hybrid53] \
        [--concurrency 1 8] [--max-tokens 64] [--prompts 8] [--cprofile 25]

On a GPU with CUDA graphs a decode step is: host work, graph replays (the phases), host syncs.
The replays cost the GPU time of the phases; everything else the engine does (input tables,
acceptance, detokenization, delivery, the MTP inputs, the op's row state) is host time that
the GPU waits for unless the overlap schedule hides it. This script measures that host part
on any machine: the engine runs its graph path (slot-prefix batches, K+1 tokens per row,
`pad_to_max`) with the phase functions called directly (on CPU nothing can be captured) and
timed, so

- host ms/step = (wall time of the decode loop - time inside the phases) / decode steps;
- torch ops/step = aten ops dispatched outside the phases (on a GPU each is a kernel launch or
  a copy, ~5-20 us of host time, and a copy to the host is a sync), counted in a second run
  under a TorchDispatchMode (which slows that run, so it is not the timed one);
- `--cprofile N`: the N functions with the most exclusive time outside the phases.

`--device cuda` uses the real captured graphs (then the phase time includes waiting for the
GPU wherever a phase's outputs are read). Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.engine_profile import PRESETS  # noqa: E402

_PROFILER: list[cProfile.Profile] = []  # the cProfile run's profiler: paused inside phases


class _PhaseTimer:
    """Wraps a phase callable (a GraphedPhase, or the phase function itself on CPU): seconds
    inside it, and whether a call is in progress (for the op counter)."""

    compiled = False

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.calls, self.active = fn, 0.0, 0, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.active:  # nested (a prefill inside a retried phase): counted once
            return self.fn(*args, **kwargs)
        for p in _PROFILER:
            p.disable()
        start = time.perf_counter()
        self.active = True
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.active = False
            self.seconds += time.perf_counter() - start
            self.calls += 1
            for p in _PROFILER:
                p.enable()


class _OpCounter(TorchDispatchMode):
    """Counts aten ops dispatched while no phase runs."""

    def __init__(self, phases: list[_PhaseTimer]) -> None:
        super().__init__()
        self.phases, self.count = phases, 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(p.active for p in self.phases):
            self.count += 1
            name = str(func.overloadpacket)
            self.by_op[name] = self.by_op.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def build_engine(model: Any, tok: Any, spec: str | None, device: str, slots: int) -> Any:
    from refserver.config import EngineConfig, GraphOptimizationConfig, SpeculativeConfig
    from refserver.engine import Engine

    on_gpu = device == "cuda"
    graphs = GraphOptimizationConfig(
        use_cudagraph=on_gpu, draft_model_use_cudagraph=on_gpu, use_unique_memory_pool=on_gpu
    )
    config = EngineConfig(
        speculative=SpeculativeConfig.from_json(spec),
        device=device,
        max_num_seqs=slots,
        enable_overlap_schedule=True,
        graph_optimization=graphs,
    )
    engine = Engine(config, model, tok)
    if not on_gpu:  # the graph path with the phase functions called directly
        engine._verify_graph = engine._verify_batch
        if engine.mtp is not None:
            engine._draft_graph = engine._draft_batch
        if engine.ngram is not None:
            engine.ngram.pad_to_max = True  # as under use_cudagraph (SPEC §1.4)
    engine._verify_graph = _PhaseTimer(engine._verify_graph)
    if engine._draft_graph is not None:
        engine._draft_graph = _PhaseTimer(engine._draft_graph)
    # Admission (the prompt's eager forward, its first token) and the MTP head's prompt fill
    # are timed apart: they are per request, not per decode step.
    engine._prefill = _PhaseTimer(engine._prefill)
    if engine.mtp is not None:
        engine.mtp.fill_long = _PhaseTimer(engine.mtp.fill_long)
    return engine


def _timers(engine: Any) -> tuple[list[_PhaseTimer], list[_PhaseTimer]]:
    """(the decode phases, the per-request prompt work)."""
    phases = [p for p in (engine._verify_graph, engine._draft_graph) if p is not None]
    prompt = [engine._prefill] + ([engine.mtp.fill_long] if engine.mtp is not None else [])
    return phases, prompt


def run_once(engine: Any, prompts: list[list[int]], max_tokens: int, concurrency: int) -> dict:
    """Decode every prompt, `concurrency` at a time (a new one is submitted as one finishes),
    after a warm-up request; the step count, tokens, wall and phase seconds of the timed part."""
    from refserver.engine import Request
    from refserver.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    engine.generate([Request(prompts[0], params, lambda out: None)])  # warm-up (capture)
    phases, prompt = _timers(engine)
    for p in phases + prompt:
        p.seconds, p.calls = 0.0, 0
    queue = list(prompts)
    tokens = [0]

    def sink(out: Any) -> None:
        tokens[0] += len(out.token_ids)
        if out.finish_reason is not None and queue:
            engine.submit(Request(queue.pop(0), params, sink))

    for _ in range(min(concurrency, len(queue))):
        engine.submit(Request(queue.pop(0), params, sink))
    steps, rows = 0, 0
    start = time.perf_counter()
    while engine.has_work():
        rows += engine.num_running
        steps += engine.num_running > 0
        engine.step()
    wall = time.perf_counter() - start
    return {
        "steps": steps,
        "rows": rows,
        "tokens": tokens[0],
        "wall": wall,
        "phase": sum(p.seconds for p in phases),
        "prompt": sum(p.seconds for p in prompt),
        "requests": engine._prefill.calls,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--spec", action="append", choices=sorted(PRESETS))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from refserver.heldout import heldout_prompts
    from refserver.model import load_model

    model, tok = load_model(device=args.device)
    picked = heldout_prompts()[: args.prompts]
    prompts = [tok.encode(tok.apply_chat_template(p["messages"])) for p in picked]
    rows_out = []
    for name in args.spec or ["none", "hybrid53"]:
        for c in args.concurrency:
            engine = build_engine(model, tok, PRESETS[name], args.device, max(args.concurrency))
            r = run_once(engine, prompts, args.max_tokens, c)
            phases, prompt = _timers(engine)
            counter = _OpCounter(phases + prompt)
            with counter:
                counted = run_once(engine, prompts, args.max_tokens, c)
            host = (r["wall"] - r["phase"] - r["prompt"]) / r["steps"]
            prompt_ms = 1e3 * r["prompt"] / r["requests"]
            ops = counter.count / counted["steps"]
            rows_out.append(
                (
                    name,
                    c,
                    r["steps"],
                    r["rows"] / r["steps"],
                    host,
                    r["phase"] / r["steps"],
                    ops,
                    prompt_ms,
                )
            )
            top = sorted(counter.by_op.items(), key=lambda kv: -kv[1])[:12]
            print(f"{name} c={c} ops outside phases, per step:", file=sys.stderr)
            print(
                "  " + ", ".join(f"{k} {v / counted['steps']:.1f}" for k, v in top),
                file=sys.stderr,
            )
            if args.cprofile:
                profiler = cProfile.Profile()
                _PROFILER.append(profiler)
                profiler.enable()
                run_once(engine, prompts, args.max_tokens, c)
                profiler.disable()
                _PROFILER.clear()
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(
                    args.cprofile
                )
    print(
        f"host cost per decode step: {args.device}, {args.prompts} held-out prompts x "
        f"{args.max_tokens} tokens, graph path (phases {'replayed' if args.device == 'cuda' else 'called directly'}), overlap on"
    )
    print(
        "| config | c | steps | rows/step | host ms/step | host us/row | phase ms/step "
        "| torch ops/step outside phases | prompt work ms/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, c, steps, rps, host, phase, ops, prompt_ms in rows_out:
        print(
            f"| {name} | {c} | {steps} | {rps:.2f} | {1e3 * host:.2f} | {1e6 * host / rps:.0f} "
            f"| {1e3 * phase:.2f} | {ops:.0f} | {prompt_ms:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
