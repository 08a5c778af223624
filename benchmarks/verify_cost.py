"""What one verification forward costs on this CPU, by tokens per row: T = 1 .. K+1, and an MTP step.

    python -m benchmarks.verify_cost --dtype float32 --threads 2
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m benchmarks.verify_cost  # AVX2
    python -m benchmarks.verify_cost --profile 6     # + torch.profiler's op table at T=6
    python -m benchmarks.verify_cost --compare-linears  # + the other float32 linear paths

Speculation pays only if verifying K+1 tokens costs much less than K+1 single-token steps. This
times exactly what the engine does per decode step, in-process, one row (concurrency 1):

- `fwd`: `Transformer.forward` of T tokens at the end of a `--context`-token prefix;
- `logits`: `Transformer.logits` on those T hidden states (the engine needs all T);
- `mtp step`: one chained MTP head step (`MTPHead.fill` of one pair + its output head), what
  each of the s drafting steps costs.

All shapes run interleaved in a fresh random order every repetition (a shared machine's slow
second hits all of them alike); the table is the median over repetitions, and "vs T=1" is
fwd+logits(T) / fwd+logits(1) of the same repetition, medianed. `--compare-linears` (float32)
adds fwd+logits with refserver's rows kernel switched off (oneDNN's packed weights, what
refserver did before) and with both switched off (plain F.linear = MKL sgemm), in the same
interleaved repetitions. Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from refserver.model import load_model

SEED = 20261201


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --compare-linears: the float32 CPU linear paths of refserver.model.Linear, by what is off.
LINEAR_PATHS = {
    "rows kernel": (True, True),
    "oneDNN packed": (False, True),
    "F.linear": (False, False),
}


def build(dtype: torch.dtype, context: int, k: int, compare_linears: bool = False):
    """The model with a `context`-token prefix in slot 0, and one callable per measured shape."""
    from refserver.model import Linear
    from refserver.mtp import MTPInput, load_mtp_drafter

    model, _ = load_model(dtype=dtype)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    saved = [(m.rows_kernel, m.packed) for m in linears]
    cache = model.new_cache(1, context + k + 8)
    gen = torch.Generator().manual_seed(SEED)
    prefix = torch.randint(0, model.config.vocab_size, (1, context), generator=gen)
    slots = torch.zeros(1, dtype=torch.long)
    with torch.inference_mode():
        hidden = model.forward(prefix, torch.arange(context)[None], cache, slots)
    drafter = load_mtp_drafter(None, model, 1, context + k + 8)
    drafter.draft([MTPInput(0, hidden[0], prefix[0, 1:].tolist() + [0], 0)], 1)  # fill its cache

    def verify(t: int, part: str, path: str = "rows kernel") -> Callable[[], object]:
        tokens = prefix[:, -t:].clone()
        positions = torch.arange(context, context + t)[None]
        rows_on, packed_on = LINEAR_PATHS[path]

        def run() -> object:
            for m, (rows, packed) in zip(linears, saved, strict=True):
                m.rows_kernel, m.packed = rows and rows_on, packed if packed_on else None
            try:
                with torch.inference_mode():
                    h = model.forward(tokens, positions, cache, slots)
                    return model.logits(h) if part != "fwd" else h
            finally:
                for m, (rows, packed) in zip(linears, saved, strict=True):
                    m.rows_kernel, m.packed = rows, packed

        return run

    def logits_only(t: int) -> Callable[[], object]:
        h = hidden[:, -t:].clone()

        def run() -> object:
            with torch.inference_mode():
                return model.logits(h)

        return run

    def mtp_step() -> object:
        return drafter.draft([MTPInput(0, hidden[0, -1:], [0], context - 1)], 1)

    shapes: dict[str, Callable[[], object]] = {}
    for t in range(1, k + 2):
        shapes[f"fwd T={t}"] = verify(t, "fwd")
        shapes[f"logits T={t}"] = logits_only(t)
        shapes[f"fwd+logits T={t}"] = verify(t, "fwd+logits")
        for path in LINEAR_PATHS if compare_linears else ():
            shapes[f"{path} T={t}"] = verify(t, "fwd+logits", path)
    shapes["mtp step"] = mtp_step
    return shapes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=5, help="draft length: T goes up to K+1")
    ap.add_argument("--context", type=int, default=256, help="tokens already in the cache")
    ap.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    ap.add_argument("--profile", type=int, default=0, help="also print the op table at this T")
    ap.add_argument(
        "--compare-linears",
        action="store_true",
        help="also time fwd+logits with each float32 linear path (rows kernel, oneDNN, F.linear)",
    )
    a = ap.parse_args(argv)
    for name in ("threads", "k", "context", "reps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name}={getattr(a, name)}: must be >= 1")
    if not 0 <= a.profile <= a.k + 1:
        ap.error(f"--profile={a.profile}: must be in 0..{a.k + 1}")
    torch.set_num_threads(a.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    shapes = build(dtype, a.context, a.k, a.compare_linears)
    for fn in shapes.values():  # warm-up: allocator, oneDNN primitive caches
        fn(), fn()
    rng = random.Random(SEED)
    ms: dict[str, list[float]] = defaultdict(list)
    for _ in range(a.reps):
        for name in rng.sample(list(shapes), len(shapes)):
            ms[name].append(1e3 * timed(shapes[name]))
    med = {name: statistics.median(v) for name, v in ms.items()}
    one = ms["fwd+logits T=1"]
    print(
        f"\nverify cost: {a.dtype}, {a.threads} thread(s), context {a.context}, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}, median of {a.reps} interleaved reps (ms)\n"
    )
    print("| T | fwd | logits | fwd+logits | vs T=1 | per token |")
    print("|---|---|---|---|---|---|")
    for t in range(1, a.k + 2):
        both = ms[f"fwd+logits T={t}"]
        ratio = statistics.median(x / y for x, y in zip(both, one, strict=True))
        print(
            f"| {t} | {med[f'fwd T={t}']:.1f} | {med[f'logits T={t}']:.1f} | "
            f"{med[f'fwd+logits T={t}']:.1f} | {ratio:.2f}x | {med[f'fwd+logits T={t}'] / t:.1f} |"
        )
    print(f"\nMTP step (head block + its output head, one row): {med['mtp step']:.1f} ms")
    if a.compare_linears:
        names = list(LINEAR_PATHS)
        print("\nfwd+logits (ms) by float32 linear path, same reps; ratios per rep, medianed:\n")
        print("| T | " + " | ".join(names) + " | rows / oneDNN | rows / F.linear |")
        print("|---|" + "---|" * (len(names) + 2))
        for t in range(1, a.k + 2):
            v = {n: ms[f"{n} T={t}"] for n in names}
            r = [
                statistics.median(x / y for x, y in zip(v[names[0]], v[n], strict=True))
                for n in names[1:]
            ]
            cells = " | ".join(f"{statistics.median(v[n]):.1f}" for n in names)
            print(f"| {t} | {cells} | {r[0]:.2f}x | {r[1]:.2f}x |")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        fn = shapes[f"fwd+logits T={a.profile}"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                fn()
        print(f"\nop table, fwd+logits T={a.profile}, 5 calls:\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    return 0


if __name__ == "__main__":
    sys.exit(main())
