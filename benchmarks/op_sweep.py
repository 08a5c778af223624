"""Side-by-side sweep of two hybrid_mtp_ngram implementations on the same inputs (issues 3, 15).

    python -m benchmarks.op_sweep [--impl MODULE:FN] [--baseline MODULE:FN|none] [--quick]
                                  [--out FILE] [--device cpu|cuda]

Defaults: ``--impl cuda_ext:hybrid_mtp_ngram`` (this project's op); ``--baseline`` is the
straightforward design (``benchmarks.straightforward``, B <= 1024) on CUDA and the oracle on CPU.
FN takes the oracle's argument list (``refimpl.hybrid_mtp_ngram``) and works in place.

Per point, before anything is timed, both implementations run on a fresh copy of the same input
and their outputs are compared with a reference (the oracle where it is cheap enough, else the
CPU op, which the kernel suite checks against the oracle). An implementation that differs (or
raises) is not timed at that point; the `check` column says how it differed. Then:

- CUDA: each implementation is captured in a CUDA graph of many calls (inputs rotated over enough
  copies that L2 does not serve repeats), each call preceded by a reset of the outputs from a
  pristine copy made when the inputs were created, so every call starts from fresh inputs. The
  reset-only graph is timed the same way and subtracted. Replays of the implementations and the
  reset alternate, so drift in clocks or temperature hits all columns alike. An implementation
  that cannot be captured is timed eagerly with events and marked `eager`.
- CPU: calls alternate between the implementations, each on freshly restored outputs, timed
  with a host clock; median.

must-read = the haystack bytes an exact implementation has to read; GB/s and % of the copy
bandwidth (measured in the same run, read + write) are for the impl column.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from refimpl import impls

log = logging.getLogger("op_sweep")

K = 5  # num_speculative_tokens
ORI = 4  # 1 target token + 3 MTP drafts
MAX_N, MIN_N = 3, 1  # SPEC §3's engine configuration
VOCAB = 32000
PLANT_EARLY = 16
L2_DEFEAT_BYTES = 256 << 20
ORACLE_MAX_TOKENS = 1 << 20  # haystack tokens of a batch above which the CPU op is the reference
STRAIGHTFORWARD = "benchmarks.straightforward:hybrid_mtp_ngram"
ARG_ORDER = ("token_ids_all", "prompt_lens", "pre_ids", "step_idx", "draft_token_num",
             "draft_tokens", "seq_lens_this_time", "seq_lens_decoder", "max_dec_len")  # fmt: skip
OUTPUTS = ("draft_tokens", "seq_lens_this_time")


@dataclass(frozen=True)
class Point:
    batch: int
    prompt: int
    generated: int
    pattern: str  # early | late | none | threshold


def sweep(quick: bool, device: str = "cuda") -> list[Point]:
    patterns = ["early", "late", "none", "threshold"]
    if device == "cpu":  # the oracle is the CPU baseline: keep the haystacks small
        batches, prompts, gens = ([1, 8], [1024], [256]) if quick else ([1, 8, 64], [1024, 4096], [256])  # fmt: skip
        return [Point(b, p, g, pat) for b in batches for p in prompts for g in gens for pat in patterns]  # fmt: skip
    batches = [1, 8, 64, 256, 1024, 4096]
    prompts = [1024, 8192, 32768]
    gens = [256, 4096]
    if quick:
        batches, prompts, gens = [1, 64, 1024], [1024, 32768], [256]
    points = [
        Point(b, p, g, pat) for b in batches for p in prompts for g in gens for pat in patterns
    ]
    points += [Point(b, 131072, g, pat) for b in (1, 8) for g in gens for pat in patterns]
    return points


def make_inputs(pt: Point, device: str, gen: torch.Generator) -> dict:
    """One input set. The ngram's tokens (VOCAB+1..VOCAB+3) appear nowhere else unless planted.

    ``pristine`` holds copies of the outputs as created: every timed call starts from them.
    """
    B, P, G = pt.batch, pt.prompt, pt.generated
    step = G - 1

    # Drawn on the target device (fast for GiB-sized sets), seeded from the caller's generator.
    dev_gen = torch.Generator(device=device).manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=gen))
    )

    def rand(*shape):
        return torch.randint(0, VOCAB, shape, generator=dev_gen, device=device)

    tok = rand(B, P)
    pre = rand(B, G + 8)
    ngram = torch.arange(VOCAB + 1, VOCAB + 1 + MAX_N, device=device)
    pre[:, step - MAX_N + 1 : step + 1] = ngram
    if pt.pattern in ("early", "threshold"):
        tok[:, PLANT_EARLY : PLANT_EARLY + MAX_N] = ngram
    elif pt.pattern == "late":
        tok[:, P - 10 - MAX_N : P - 10] = ngram
    lens = torch.full((B,), ORI, dtype=torch.int32, device=device)
    threshold = 1 << 40
    if pt.pattern == "threshold":  # bites about two thirds into the batch
        threshold = B * ORI + B // 4 + 1
    inp = dict(
        token_ids_all=tok,
        prompt_lens=torch.full((B,), P, dtype=torch.int64, device=device),
        pre_ids=pre,
        step_idx=torch.full((B,), step, dtype=torch.int64, device=device),
        draft_token_num=lens.clone(),
        draft_tokens=rand(B, K + 1),  # not zeros: an unwritten slot shows
        seq_lens_this_time=lens,
        seq_lens_decoder=torch.ones((B,), dtype=torch.int32, device=device),
        max_dec_len=torch.full((B,), 1 << 20, dtype=torch.int64, device=device),
        threshold=threshold,
    )
    inp["pristine"] = {name: inp[name].clone() for name in OUTPUTS}
    return inp


def restore(inp: dict) -> None:
    """Put the outputs back to how make_inputs created them (a fresh input)."""
    for name in OUTPUTS:
        inp[name].copy_(inp["pristine"][name])


def copy_of(inp: dict, device: str | None = None) -> dict:
    """An independent fresh copy of an input set (outputs pristine), optionally on `device`."""
    out = {k: (v.to(device) if device else v).clone() for k, v in inp.items() if k in ARG_ORDER}
    for name in OUTPUTS:
        out[name] = inp["pristine"][name].to(out[name].device).clone()
    out["threshold"] = inp["threshold"]
    out["pristine"] = {name: out[name].clone() for name in OUTPUTS}
    return out


def must_read_bytes(pt: Point) -> int:
    """Haystack bytes any exact implementation has to read (int64 tokens)."""
    if pt.pattern in ("early", "threshold"):
        per_row = PLANT_EARLY + MAX_N
    elif pt.pattern == "late":
        per_row = pt.prompt - 10
    else:
        per_row = pt.prompt + pt.generated - 1
    return pt.batch * per_row * 8


def call(fn: Callable, inp: dict) -> None:
    """One call of an implementation with the oracle's signature, in place on ``inp``."""
    fn(*[inp[k] for k in ARG_ORDER], MAX_N, MIN_N, K, threshold=inp["threshold"], pad_to_max=False)


def call_op(inp: dict) -> None:
    """The op itself through torch.ops (used by benchmarks.op_profile under ncu)."""
    torch.ops.specgate.hybrid_mtp_ngram(
        *[inp[k] for k in ARG_ORDER], MAX_N, MIN_N, K, inp["threshold"], False
    )


# ---- the equality check ---------------------------------------------------------------------


def reference(pt: Point, inp: dict) -> tuple[str, tuple[torch.Tensor, torch.Tensor]]:
    """(name, outputs on CPU) of the reference: the oracle if cheap enough, else the CPU op."""
    if pt.batch * (pt.prompt + pt.generated) <= ORACLE_MAX_TOKENS:  # the oracle lists them all
        name, fn = "oracle", impls.load(impls.ORACLE).fn
    else:
        import cuda_ext

        if not cuda_ext.is_available("cpu"):
            raise RuntimeError("op_sweep: the CPU op (reference for large points) is not built")
        name, fn = "cpu op", cuda_ext.hybrid_mtp_ngram
    work = copy_of(inp, "cpu")
    call(fn, work)
    return name, tuple(work[k] for k in OUTPUTS)


def difference(want: tuple, inp: dict, fn: Callable) -> str | None:
    """Run ``fn`` on a fresh copy of ``inp``; None if its outputs equal ``want``, else how not."""
    work = copy_of(inp)
    try:
        call(fn, work)
        if work["token_ids_all"].is_cuda:
            torch.cuda.synchronize()
    except Exception as exc:  # reported in the table, the point is not timed
        return f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    for name, expected in zip(OUTPUTS, want, strict=True):
        got = work[name].cpu()
        if not torch.equal(got, expected):
            rows = torch.nonzero((got != expected).reshape(got.shape[0], -1).any(1)).flatten()
            b = int(rows[0])
            return (
                f"{name} differs in {len(rows)}/{got.shape[0]} rows; row {b}: "
                f"want {expected[b].tolist()} got {got[b].tolist()}"
            )
    return None


# ---- timing -----------------------------------------------------------------------------------


class GraphTimer:
    """A CUDA graph of `calls` (reset outputs from pristine, then optionally call fn) over `sets`."""

    def __init__(self, sets: list[dict], fn: Callable | None, calls: int):
        self.calls = calls

        def body():
            for i in range(calls):
                s = sets[i % len(sets)]
                restore(s)
                if fn is not None:
                    call(fn, s)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (workspaces, lazy builds) off the capture
            body()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            body()
        self.graph.replay()
        torch.cuda.synchronize()

    def once_us(self) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000


class EagerTimer:
    """Fallback for an implementation that cannot be captured: `calls` eager calls, events."""

    def __init__(self, sets: list[dict], fn: Callable | None, calls: int):
        self.sets, self.fn, self.calls = sets, fn, calls

    def once_us(self) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(self.calls):
            s = self.sets[i % len(self.sets)]
            restore(s)
            if self.fn is not None:
                call(self.fn, s)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000


def cuda_times_us(sets: list[dict], fns: list[Callable], calls: int = 40, replays: int = 15):
    """Per-call µs of each fn (reset subtracted) and its mode, replays alternating between fns."""
    timers, modes = [GraphTimer(sets, None, calls)], []
    for fn in fns:
        try:
            timers.append(GraphTimer(sets, fn, calls))
            modes.append("graph")
        except Exception as exc:  # said loudly: the column is then eager, not graph replay
            log.warning("op_sweep: %s cannot be captured in a CUDA graph (%s); timing it eagerly",
                        fn, exc)  # fmt: skip
            torch.cuda.synchronize()
            timers.append(EagerTimer(sets, fn, calls))
            modes.append("eager")
    samples: list[list[float]] = [[] for _ in timers]
    for rep in range(replays):
        order = range(len(timers)) if rep % 2 == 0 else reversed(range(len(timers)))
        for i in order:
            samples[i].append(timers[i].once_us())
    for s in sets:
        restore(s)
    reset = statistics.median(samples[0]) / calls
    per_call = [max(statistics.median(s) / calls - reset, 0.01) for s in samples[1:]]
    return per_call, modes


def cpu_times_us(inp: dict, fns: list[Callable], reps: int = 5) -> list[float]:
    """Median host-clock µs per call of each fn, calls alternating, outputs restored each time."""
    samples: list[list[float]] = [[] for _ in fns]
    for rep in range(reps):
        order = range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            restore(inp)
            start = time.perf_counter()
            call(fns[i], inp)
            samples[i].append((time.perf_counter() - start) * 1e6)
    restore(inp)
    return [statistics.median(s) for s in samples]


def copy_bandwidth_gbs(device: str, nbytes: int = 1 << 30) -> float:
    """Copy bandwidth on `device`, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(20 if device == "cuda" else 5):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


# ---- one point, the table ---------------------------------------------------------------------


@dataclass
class Row:
    point: Point
    impl_us: float | None  # None: not timed (differs from the reference, or raised)
    base_us: float | None
    check: str  # "ok vs <reference>" or what differed
    modes: str = ""


def measure(pt: Point, impl: impls.Impl, base: impls.Impl | None, device: str,
            gen: torch.Generator) -> Row:  # fmt: skip
    """Check both implementations against the reference on this point, then time the exact ones."""
    if device == "cuda":
        set_bytes = pt.batch * (pt.prompt + pt.generated) * 8
        copies = max(1, min(16, -(-L2_DEFEAT_BYTES // set_bytes)))
    else:
        copies = 1
    sets = [make_inputs(pt, device, gen) for _ in range(copies)]
    ref_name, want = reference(pt, sets[0])
    named = [("impl", impl)] + ([("baseline", base)] if base else [])
    notes, exact = [], []
    for label, im in named:
        diff = difference(want, sets[0], im.fn)
        if diff is None:
            exact.append(im)
        else:
            notes.append(f"{label} {diff}")
            log.warning("op_sweep: %s at %s: %s (not timed)", im.name, pt, diff)
    check = "; ".join(notes) if notes else f"ok vs {ref_name}"
    times: dict[str, float] = {}
    modes = ""
    if exact:
        if device == "cuda":
            per_call, mode_list = cuda_times_us(sets, [im.fn for im in exact])
            modes = ",".join(sorted(set(mode_list)))
        else:
            per_call = cpu_times_us(sets[0], [im.fn for im in exact])
            modes = "host clock"
        times = {im.name: t for im, t in zip(exact, per_call, strict=True)}
    del sets
    if device == "cuda":
        torch.cuda.empty_cache()
    return Row(pt, times.get(impl.name), times.get(base.name) if base else None, check, modes)


HEADER = (
    "| B | prompt | gen | pattern | impl µs | baseline µs | baseline/impl | must-read MiB | "
    "impl GB/s | % copy BW | check |\n"
    "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
)


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f}" if n < 2**30 else f"{n / 2**30:.2f} Gi"


def fmt_row(row: Row, copy_bw: float) -> str:
    pt = row.point
    nbytes = must_read_bytes(pt)
    impl = f"{row.impl_us:.2f}" if row.impl_us is not None else "—"
    base = f"{row.base_us:.2f}" if row.base_us is not None else "—"
    ratio = f"{row.base_us / row.impl_us:.2f}" if row.impl_us and row.base_us else "—"
    bw = f"{nbytes / (row.impl_us * 1e-6) / 1e9:.0f}" if row.impl_us else "—"
    share = f"{100 * nbytes / (row.impl_us * 1e-6) / 1e9 / copy_bw:.0f}%" if row.impl_us else "—"
    mode = "" if row.modes in ("graph", "host clock", "") else f" ({row.modes})"
    return (
        f"| {pt.batch} | {pt.prompt} | {pt.generated} | {pt.pattern} | {impl} | {base} | "
        f"{ratio} | {fmt_bytes(nbytes)} | {bw} | {share} | {row.check}{mode} |"
    )


def summary(rows: list[Row]) -> str:
    """Median and range of the ratio, and the points where the impl is behind or not timed."""
    ratios = [r.base_us / r.impl_us for r in rows if r.impl_us and r.base_us]
    untimed = [r for r in rows if r.impl_us is None]
    lines = []
    if ratios:
        behind = [r for r in rows if r.impl_us and r.base_us and r.base_us < r.impl_us]
        lines.append(
            f"baseline/impl over {len(ratios)} points: median {statistics.median(ratios):.2f}, "
            f"min {min(ratios):.2f}, max {max(ratios):.2f}; impl behind at {len(behind)} points"
        )
        lines += [f"  behind: {r.point} impl {r.impl_us:.2f} µs, baseline {r.base_us:.2f} µs"
                  for r in behind]  # fmt: skip
    lines.append(f"impl not timed (differs or raised) at {len(untimed)} points")
    return "\n".join(lines)


def run(impl_spec: str, base_spec: str | None, device: str, quick: bool,
        out: str | None, points: list[Point] | None = None) -> list[Row]:  # fmt: skip
    impl = impls.load(impl_spec)
    base = impls.load(base_spec) if base_spec else None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("op_sweep --device cuda: no CUDA device here (try --device cpu)")
        card = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    else:
        card = f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"
    copy_bw = copy_bandwidth_gbs(device, 1 << 30 if device == "cuda" else 1 << 28)
    head = (
        f"card: {card}; copy bandwidth (read+write) measured in this run: {copy_bw:.0f} GB/s\n"
        f"impl: {impl.name}; baseline: {base.name if base else 'none'}\n\n{HEADER}"
    )
    # Written row by row, so that a run cut off by a time limit keeps the rows it measured.
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out, "w")) if out else None

        def emit(text: str) -> None:
            print(text, flush=True)
            if sink:
                sink.write(text + "\n")
                sink.flush()

        emit(head)
        rows = []
        gen = torch.Generator().manual_seed(20261127)
        for pt in points if points is not None else sweep(quick, device):
            row = measure(pt, impl, base, device, gen)
            rows.append(row)
            emit(fmt_row(row, copy_bw))
        emit("\n" + summary(rows))
    return rows


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default=impls.OP, help="module:function under test")
    parser.add_argument("--baseline", default=None,
                        help=f"module:function beside it, or 'none' (default: {STRAIGHTFORWARD} "
                             f"on cuda, {impls.ORACLE} on cpu)")  # fmt: skip
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="a subset of the sweep")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args()
    base = args.baseline or (STRAIGHTFORWARD if args.device == "cuda" else impls.ORACLE)
    for flag, spec in (("--impl", args.impl), ("--baseline", base)):
        if spec != "none":
            try:
                impls.load(spec)
            except ValueError as exc:  # impls.load names the spec and what is wrong with it
                parser.error(f"{flag} {str(exc).removeprefix('--impl ')}")
    run(args.impl, None if base == "none" else base, args.device, args.quick, args.out)


if __name__ == "__main__":
    main()
