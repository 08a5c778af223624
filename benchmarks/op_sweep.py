"""Benchmark sweep of specgate::hybrid_mtp_ngram on CUDA, with a plain-torch peer (issue 3).

    python -m benchmarks.op_sweep [--quick] [--out bench.md]     # on a GPU machine
    python -m benchmarks.op_sweep --cpu-only                      # CPU op against the oracle

Per point it reports the op's median time per call (CUDA graph replay of many calls, inputs
rotated across enough copies to defeat the L2 cache), the bytes a minimal reader must read, the
effective bandwidth, the share of the device-to-device copy bandwidth measured in the same run,
and the peer: the same search written with plain torch ops (unfold, compare, argmax) the way an
engine without a custom kernel would, timed with CUDA events, and the ratio.

The op is in place, so each timed call is preceded by a reset of seq_lens_this_time (a copy of
B int32); the reset alone is timed the same way and subtracted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import dataclass

import torch

log = logging.getLogger("op_sweep")

K = 5  # num_speculative_tokens
ORI = 4  # 1 target token + 3 MTP drafts
MAX_N, MIN_N = 3, 1  # SPEC §3's engine configuration
VOCAB = 32000
PLANT_EARLY = 16
L2_DEFEAT_BYTES = 256 << 20
ARG_ORDER = ("token_ids_all", "prompt_lens", "pre_ids", "step_idx", "draft_token_num",
             "draft_tokens", "seq_lens_this_time", "seq_lens_decoder", "max_dec_len")  # fmt: skip


@dataclass(frozen=True)
class Point:
    batch: int
    prompt: int
    generated: int
    pattern: str  # early | late | none | threshold


def sweep(quick: bool) -> list[Point]:
    batches = [1, 8, 64, 256, 1024, 4096]
    prompts = [1024, 8192, 32768]
    gens = [256, 4096]
    patterns = ["early", "late", "none", "threshold"]
    if quick:
        batches, prompts, gens = [1, 64, 1024], [1024, 32768], [256]
    points = [
        Point(b, p, g, pat) for b in batches for p in prompts for g in gens for pat in patterns
    ]
    points += [Point(b, 131072, g, pat) for b in (1, 8) for g in gens for pat in patterns]
    return points


def make_inputs(pt: Point, device: str, gen: torch.Generator) -> dict:
    """One input set. The ngram's tokens (VOCAB+1..VOCAB+3) appear nowhere else unless planted."""
    B, P, G = pt.batch, pt.prompt, pt.generated
    step = G - 1

    def rand(*shape):
        return torch.randint(0, VOCAB, shape, generator=gen, device="cpu").to(device)

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
    return dict(
        token_ids_all=tok,
        prompt_lens=torch.full((B,), P, dtype=torch.int64, device=device),
        pre_ids=pre,
        step_idx=torch.full((B,), step, dtype=torch.int64, device=device),
        draft_token_num=lens.clone(),
        draft_tokens=torch.zeros((B, K + 1), dtype=torch.int64, device=device),
        seq_lens_this_time=lens,
        seq_lens_decoder=torch.ones((B,), dtype=torch.int32, device=device),
        max_dec_len=torch.full((B,), 1 << 20, dtype=torch.int64, device=device),
        threshold=threshold,
    )


def must_read_bytes(pt: Point) -> int:
    """Haystack bytes any exact implementation has to read (int64 tokens)."""
    if pt.pattern in ("early", "threshold"):
        per_row = PLANT_EARLY + MAX_N
    elif pt.pattern == "late":
        per_row = pt.prompt - 10
    else:
        per_row = pt.prompt + pt.generated - 1
    return pt.batch * per_row * 8


def call_op(inp: dict) -> None:
    torch.ops.specgate.hybrid_mtp_ngram(
        inp["token_ids_all"], inp["prompt_lens"], inp["pre_ids"], inp["step_idx"],
        inp["draft_token_num"], inp["draft_tokens"], inp["seq_lens_this_time"],
        inp["seq_lens_decoder"], inp["max_dec_len"], MAX_N, MIN_N, K, inp["threshold"], False,
    )  # fmt: skip


def graph_time_us(sets: list[dict], with_op: bool, calls: int = 40, replays: int = 15) -> float:
    """Median per-call time of a graph that resets and (optionally) runs the op `calls` times."""
    originals = [s["seq_lens_this_time"].clone() for s in sets]

    def body():
        for i in range(calls):
            s = sets[i % len(sets)]
            s["seq_lens_this_time"].copy_(originals[i % len(sets)])
            if with_op:
                call_op(s)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times)


def peer(inp: dict) -> None:
    """The same search in plain torch: per n and haystack, unfold + compare + argmax.

    Row-local budget and copy included; the sequential threshold pass is not (an engine would
    add it on the host or in another kernel), which flatters the peer.
    """
    tok, pre, step, plen = inp["token_ids_all"], inp["pre_ids"], inp["step_idx"], inp["prompt_lens"]
    lens, draft = inp["seq_lens_this_time"], inp["draft_tokens"]
    B = tok.shape[0]
    found = torch.zeros(B, dtype=torch.bool, device=tok.device)
    src_hay = torch.zeros(B, dtype=torch.int64, device=tok.device)
    src_pos = torch.zeros(B, dtype=torch.int64, device=tok.device)
    for n in range(MAX_N, MIN_N - 1, -1):
        idx = (step[:, None] - (n - 1) + torch.arange(n, device=tok.device)).clamp(min=0)
        ngram = pre.gather(1, idx)
        for h, (hay, length) in enumerate(((tok, plen), (pre, step))):
            win = hay.unfold(1, n, 1)
            eq = (win == ngram[:, None, :]).all(-1)
            pos = torch.arange(win.shape[1], device=tok.device)
            eq &= (pos[None] + n < length[:, None]) & (step >= n)[:, None] & ~found[:, None]
            has = eq.any(1)
            first = eq.to(torch.int8).argmax(1)
            src_hay = torch.where(has, h, src_hay)
            src_pos = torch.where(has, first + n, src_pos)
            found |= has
    ori = lens.to(torch.int64)
    budget = torch.minimum(K - ori + 1, inp["max_dec_len"] - step - 1).clamp(min=0)
    avail = torch.where(src_hay == 0, plen, step) - src_pos
    m = torch.where(found & (ori > 0), torch.minimum(budget, avail), 0)
    j = torch.arange(draft.shape[1], device=tok.device)
    offset = (j[None] - ori[:, None]).clamp(min=0)
    take = src_pos[:, None] + offset
    cand = torch.where(src_hay[:, None] == 0, tok.gather(1, take.clamp(max=tok.shape[1] - 1)),
                       pre.gather(1, take.clamp(max=pre.shape[1] - 1)))  # fmt: skip
    keep = (j[None] >= ori[:, None]) & (j[None] < (ori + m)[:, None])
    draft.copy_(torch.where(keep, cand, draft))
    lens.copy_((ori + m).to(torch.int32))


def peer_time_us(inp: dict, reps: int = 5) -> float:
    orig = inp["seq_lens_this_time"].clone()
    peer(inp)
    times = []
    for _ in range(reps):
        inp["seq_lens_this_time"].copy_(orig)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        peer(inp)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def check_point(pt: Point, inp: dict) -> None:
    """The op and the peer agree with the CPU op on this input (threshold aside for the peer)."""
    import cuda_ext

    cpu = {k: (v.cpu().clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    call_op(cpu)
    gpu = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    call_op(gpu)
    assert torch.equal(gpu["draft_tokens"].cpu(), cpu["draft_tokens"]), pt
    assert torch.equal(gpu["seq_lens_this_time"].cpu(), cpu["seq_lens_this_time"]), pt
    if pt.pattern != "threshold":
        p = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
        peer(p)
        assert torch.equal(p["seq_lens_this_time"].cpu(), cpu["seq_lens_this_time"]), ("peer", pt)
    del cuda_ext


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f}" if n < 2**30 else f"{n / 2**30:.2f} Gi"


def run_gpu(quick: bool, out: str | None) -> None:
    import cuda_ext

    assert cuda_ext.is_available("cuda"), "the CUDA op is not built"
    name = torch.cuda.get_device_name()
    copy_bw = copy_bandwidth_gbs()
    gen = torch.Generator().manual_seed(20261127)
    header = (
        f"card: {name}, torch {torch.__version__}; D2D copy bandwidth (read+write) measured "
        f"in this run: {copy_bw:.0f} GB/s\n\n"
        "| B | prompt | gen | pattern | op µs | must-read MiB | GB/s | % copy BW | peer µs | peer/op |\n"
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    print(header, flush=True)
    for pt in sweep(quick):
        set_bytes = pt.batch * (pt.prompt + pt.generated) * 8
        copies = max(1, min(16, -(-L2_DEFEAT_BYTES // set_bytes)))
        sets = [make_inputs(pt, "cuda", gen) for _ in range(copies)]
        check_point(pt, sets[0])
        t_reset = graph_time_us(sets, with_op=False)
        t_total = graph_time_us(sets, with_op=True)
        t_op = max(t_total - t_reset, 0.01)
        try:
            t_peer = peer_time_us(sets[0])
        except torch.OutOfMemoryError:
            t_peer = float("nan")
        nbytes = must_read_bytes(pt)
        bw = nbytes / (t_op * 1e-6) / 1e9
        row = (
            f"| {pt.batch} | {pt.prompt} | {pt.generated} | {pt.pattern} | {t_op:.2f} | "
            f"{fmt_bytes(nbytes)} | {bw:.0f} | {100 * bw / copy_bw:.0f}% | {t_peer:.0f} | "
            f"{t_peer / t_op:.0f}x |"
        )
        lines.append(row)
        print(row, flush=True)
        del sets
        torch.cuda.empty_cache()
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")


def cpu_vs_oracle(batch: int = 64, prompt: int = 4096, generated: int = 256) -> str:
    """The CPU op against the Python oracle on one no-match batch (the oracle's worst case)."""
    import cuda_ext
    import refimpl

    assert cuda_ext.is_available("cpu")
    inp = make_inputs(
        Point(batch, prompt, generated, "none"), "cpu", torch.Generator().manual_seed(1)
    )
    args = [inp[k] for k in ARG_ORDER]

    def timed(fn, reps):
        times = []
        for _ in range(reps):
            work = [a.clone() for a in args]
            start = time.perf_counter()
            fn(*work, MAX_N, MIN_N, K, threshold=inp["threshold"])
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    t_op = timed(cuda_ext.hybrid_mtp_ngram, 20)
    t_ref = timed(refimpl.hybrid_mtp_ngram, 3)
    return (
        f"CPU op vs oracle, B={batch} x prompt {prompt} + generated {generated}, no match, "
        f"{torch.get_num_threads()} threads: op {t_op * 1e3:.2f} ms, oracle {t_ref * 1e3:.0f} ms, "
        f"ratio {t_ref / t_op:.0f}x"
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of the sweep")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU op vs the oracle")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args()
    line = cpu_vs_oracle()
    print(line, flush=True)
    if not args.cpu_only:
        run_gpu(args.quick, args.out)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + line + "\n")


if __name__ == "__main__":
    main()
