"""Where a CUDA-graphed decode step's GPU time goes, kernel by kernel, and what fusion saves.

    python -m benchmarks.gpu_step_profile [--gguf PATH] [--variants graph compile] --out DIR

Issue 13's measurement tool (CUDA only). It runs the engine's own phase functions
(`Engine._verify_batch`, `Engine._draft_batch`) the way the engine does under
`--graph-optimization-config`: through `cuda_graphs.GraphedPhase`, captured per batch bucket,
with graph_opt_level 0 (`graph`: the eager kernels captured as they are) and 2 (`compile`:
every block torch.compile'd, then captured), and `compile-whole` (the whole phase function
compiled: longer to compile, for comparison). Per phase and batch it reports:

- replay: GPU time per replay, back to back (CUDA events over many replays, input copies
  included: what a step pays on the device);
- launch: host time of one `GraphedPhase` call (input copies + cudaGraphLaunch) on an idle GPU,
  without the profiler, and the latency launch -> result on the host (one sync);
- kernels per replay and the top kernels by GPU time (torch.profiler over replays);
- for `compile`: capture time (compilation included) and the largest logit difference from the
  `graph` variant, with whether every argmax agrees (float32: reduction order may move the last
  bits; greedy texts are checked by the lossless scenarios, not here).

Without --gguf the weights are random (the same shapes and kernels; no tokenizer needed), which
is enough for timings and kernel counts. Not a test; prints tables, writes DIR/step_profile.md.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from refserver.cuda_graphs import GraphedPhase  # noqa: E402
from refserver.engine import Engine  # noqa: E402

KV_POSITION = 150  # where the queries sit: a held-out prompt plus some generated tokens
MAX_LEN = 2048 + 5 + 2  # the engine's cache length at --max-model-len 2048, K=5


def build(gguf: str | None, max_slots: int, device: torch.device, with_op: bool):
    """(model, cache, drafter, ngram extender or None), as the engine builds them."""
    from refserver.config import DEFAULT_MTP_DRAFT_VOCAB
    from refserver.model import ModelConfig, Transformer, load_model
    from refserver.mtp import load_mtp_drafter

    if gguf:
        model, _ = load_model(gguf, torch.float32, device)
    else:
        torch.manual_seed(0)
        with torch.device(device):
            model = Transformer(ModelConfig())
        model.eval().requires_grad_(False)
        model.freeze_()
    cache = model.new_cache(max_slots, MAX_LEN)
    # The engine's drafter: the committed head, drafts over the default draft vocabulary.
    drafter = load_mtp_drafter(None, model, max_slots, MAX_LEN, DEFAULT_MTP_DRAFT_VOCAB)
    ngram = None
    if with_op:
        from refserver.drafting import NgramExtender, resolve_impl

        impl, fn = resolve_impl("op", device)
        ngram = NgramExtender(impl, fn, 5, 3, 1, device, max_slots, MAX_LEN, pad_to_max=True)
        for slot in range(max_slots):
            ngram.admit(slot, torch.randint(0, 1000, (KV_POSITION,)).tolist(), 64)
    return model, cache, drafter, ngram


def phases(model, cache, drafter, ngram, device):
    """{name: (fn, make_inputs(B))}: the engine's verify and draft phase functions."""
    K, steps = 5, 3
    engine = types.SimpleNamespace(
        model=model,
        cache=cache,
        mtp=drafter,
        ngram=ngram,
        spec=types.SimpleNamespace(mtp_steps=steps),
    )

    def verify_inputs(B: int, T: int):
        tokens = torch.randint(0, 49152, (B, T), device=device)
        positions = KV_POSITION + torch.arange(T, device=device).repeat(B, 1)
        return tokens, positions, torch.arange(B, device=device)

    def draft_inputs(B: int):
        from refserver.drafting import DraftRow

        W = K + 1
        hidden = torch.randn(B, W, model.config.dim, device=device)
        tokens = torch.randint(0, 49152, (B, W), device=device)
        positions = KV_POSITION + torch.arange(W, device=device).repeat(B, 1)
        last = torch.full((B,), W - 1, device=device)
        slots = torch.arange(B, device=device)
        row_state = ()
        if ngram is not None:
            rows = [DraftRow(b, 7, 20, KV_POSITION + W) for b in range(B)]
            row_state = ngram.row_state(rows, steps)
        return (hidden, tokens, positions, last, slots, *row_state)

    def verify(*inputs, static_kv_len: int):
        return Engine._verify_batch(engine, *inputs, static_kv_len=static_kv_len)

    def draft(*inputs, static_kv_len: int):
        return Engine._draft_batch(engine, *inputs, static_kv_len=static_kv_len)

    return {
        "verify T=1 (none)": (verify, lambda B: verify_inputs(B, 1)),
        "verify T=6 (K=5)": (verify, lambda B: verify_inputs(B, K + 1)),
        "draft s=3 + op": (draft, draft_inputs),
    }


def measure(phase: GraphedPhase, inputs, replays: int, window: int) -> dict:
    """Timings of one captured phase reading `window` cache positions (see the docstring)."""
    from torch.profiler import ProfilerActivity, profile

    call = functools.partial(phase, static_kv_len=window)
    start = time.perf_counter()
    out = call(*inputs)
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - start
    for _ in range(10):
        call(*inputs)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(replays):
        call(*inputs)
    e1.record()
    torch.cuda.synchronize()
    replay_ms = e0.elapsed_time(e1) / replays
    launch, latency = [], []
    for _ in range(50):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = call(*inputs)
        t1 = time.perf_counter()
        result[-1].sum().item() if isinstance(result, tuple) else result.sum().item()
        t2 = time.perf_counter()
        launch.append(t1 - t0)
        latency.append(t2 - t0)
    n_prof = 20
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n_prof):
            call(*inputs)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launch_prof = [e for e in events if e.key == "cudaGraphLaunch"]
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:15]
    busy_us = sum(e.self_device_time_total for e in kernels) / n_prof
    return {
        "capture_s": capture_s,
        "replay_ms": replay_ms,
        "busy_ms": busy_us / 1e3,
        "launch_us": 1e6 * statistics.median(launch),
        "latency_us": 1e6 * statistics.median(latency),
        "launch_prof_us": (
            launch_prof[0].cpu_time_total / launch_prof[0].count if launch_prof else float("nan")
        ),
        "kernels": sum(e.count for e in kernels) / n_prof,
        "top": [(e.key[:90], e.count / n_prof, e.self_device_time_total / n_prof) for e in top],
        "out": out,
    }


def compare(a, b) -> str:
    """Largest |logit| difference between two verify outputs and whether argmax agrees."""
    if len(a) != 3:  # draft: (tokens, lengths)
        same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        return f"drafts {'identical' if same else 'DIFFER'}"
    diff = (a[1] - b[1]).abs().max().item()
    agree = torch.equal(a[2], b[2])
    return f"max |dlogit| {diff:.2e}, argmax {'identical' if agree else 'DIFFERS'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None, help="real weights (default: random, same shapes)")
    ap.add_argument("--variants", nargs="+", default=["graph", "compile"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument(
        "--windows", nargs="+", type=int, default=[256, MAX_LEN], help="cache windows read"
    )
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--no-op", action="store_true", help="draft phase without the n-gram op")
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    device = torch.device("cuda")
    built = build(args.gguf, max(args.batches), device, not args.no_op)
    lines = [
        f"# gpu_step_profile: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"float32, {'GGUF ' + args.gguf if args.gguf else 'random weights'}, "
        f"queries at position {KV_POSITION}, cache length {MAX_LEN}",
        "",
        "| phase | B | window | variant | capture s | replay ms (GPU, back to back) | profiler busy ms "
        "| host launch us | launch->result us | cudaGraphLaunch us under profiler | kernels "
        "| vs graph |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    details = []
    with torch.inference_mode():
        for name, (fn, make_inputs) in phases(*built, device).items():
            for B, window in itertools.product(args.batches, args.windows):
                torch.manual_seed(B)
                inputs = make_inputs(B)
                reference = None
                for variant in args.variants:
                    if variant == "compile-whole" and min(args.batches) != B:
                        continue  # minutes per shape: the smallest batch says enough
                    # compile: the engine's graph_opt_level 2 (each block compiled, regional);
                    # compile-whole: the whole phase function compiled, for comparison.
                    run = torch.compile(fn, dynamic=False) if variant == "compile-whole" else fn
                    phase = GraphedPhase(
                        f"{name} {variant}", run, device, compile=variant == "compile"
                    )
                    try:
                        m = measure(phase, inputs, args.replays, window)
                    except Exception as exc:  # report and go on with the other variants
                        lines.append(
                            f"| {name} | {B} | {window} | {variant} | FAILED: {exc!r:.300} |"
                        )
                        print(lines[-1], flush=True)
                        continue
                    vs = "" if reference is None else compare(reference, m["out"])
                    reference = reference or tuple(t.clone() for t in m["out"])
                    lines.append(
                        f"| {name} | {B} | {window} | {variant} | {m['capture_s']:.1f} "
                        f"| {m['replay_ms']:.3f} | {m['busy_ms']:.3f} | {m['launch_us']:.0f} "
                        f"| {m['latency_us']:.0f} | {m['launch_prof_us']:.0f} | {m['kernels']:.0f} "
                        f"| {vs} |"
                    )
                    print(lines[-1], flush=True)
                    details += [
                        f"\n## {name}, B={B}, window {window}, {variant}: top kernels (per replay)",
                        "",
                    ]
                    details += ["| kernel | calls | us |", "|---|---|---|"]
                    details += [f"| `{k}` | {c:.0f} | {us:.1f} |" for k, c, us in m["top"]]
    text = "\n".join(lines + details) + "\n"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "step_profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
