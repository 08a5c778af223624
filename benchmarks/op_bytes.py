"""Bytes actually read from DRAM per call, measured by Nsight Compute, beside the must-read model.

    python -m benchmarks.op_bytes [--out FILE] [--prompt 32768] [--generated 256]

Runs ``ncu --metrics dram__bytes_read.sum,gpu__time_duration.sum`` over one process that calls,
for every batch size of the sweep and the patterns early, late and none, the op once and the
straightforward design once (B <= 1024), each on fresh inputs. ncu flushes the caches before each
kernel, so the bytes are what one cold call reads. Needs ncu on PATH and a GPU that lets it read
counters (the lent H200s under Firecracker do; --clock-control none leaves the clocks alone).
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys

import torch

from benchmarks.op_sweep import Point, call, call_op, make_inputs, must_read_bytes

BATCHES = (1, 8, 64, 256, 1024, 4096)
PATTERNS = ("early", "late", "none")
# The op launches one kernel: the main one, or the fused one-block kernel for grids of <= 32 units.
KERNELS = {"op": ("hybrid_mtp_ngram_",), "straightforward": ("search_kernel", "threshold_kernel")}  # fmt: skip
METRICS = "dram__bytes_read.sum,gpu__time_duration.sum"


def plan(prompt: int, generated: int) -> list[tuple[Point, str]]:
    runs = []
    for b in BATCHES:
        for pattern in PATTERNS:
            pt = Point(b, prompt, generated, pattern)
            runs.append((pt, "op"))
            if b <= 1024:
                runs.append((pt, "straightforward"))
    return runs


def drive(prompt: int, generated: int) -> None:
    """The process ncu watches: one call per (point, implementation), in plan order."""
    import cuda_ext
    from benchmarks import straightforward

    if not cuda_ext.is_available("cuda"):
        raise SystemExit("benchmarks.op_bytes: the CUDA op is not built here")
    gen = torch.Generator().manual_seed(0)
    for pt, which in plan(prompt, generated):
        inp = make_inputs(pt, "cuda", gen)
        if which == "op":
            call_op(inp)
        else:
            call(straightforward.hybrid_mtp_ngram, inp)
        torch.cuda.synchronize()
        del inp
        torch.cuda.empty_cache()


def parse(log: str) -> list[dict]:
    """ncu's CSV (one row per kernel and metric) -> one dict per kernel, in launch order."""
    start = log.find('"ID"')
    if start < 0:
        raise RuntimeError(f"op_bytes: no CSV in ncu's output:\n{log[-2000:]}")
    kernels: dict[int, dict] = {}
    for rec in csv.DictReader(io.StringIO(log[start:])):
        if not rec.get("ID", "").strip().isdigit():
            continue
        k = kernels.setdefault(int(rec["ID"]), {"name": rec["Kernel Name"]})
        k[rec["Metric Name"]] = float(rec["Metric Value"].replace(",", ""))
    return [kernels[i] for i in sorted(kernels)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=32768)
    parser.add_argument("--generated", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.prompt, args.generated)
        return
    cmd = ["ncu", "--clock-control", "none", "--csv", "--print-units", "base", "--metrics", METRICS,
           "-k", "regex:hybrid_mtp_ngram_(fused_)?kernel|search_kernel|threshold_kernel",
           sys.executable, "-m", "benchmarks.op_bytes", "--drive",
           "--prompt", str(args.prompt), "--generated", str(args.generated)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"op_bytes: ncu failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
    kernels = iter(parse(done.stdout))
    lines = [
        f"card: {torch.cuda.get_device_name()}; ncu dram__bytes_read.sum, one cold eager call "
        f"each; prompt {args.prompt}, generated {args.generated}\n",
        "| B | pattern | must-read MiB | op read MiB | op read / must-read | op µs (ncu) | "
        "straightforward read MiB | straightforward µs (ncu) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    measured: dict[tuple[Point, str], tuple[float, float]] = {}
    for pt, which in plan(args.prompt, args.generated):
        nbytes = ns = 0.0
        for expected in KERNELS[which]:
            k = next(kernels)
            if expected not in k["name"]:
                raise RuntimeError(f"op_bytes: expected {expected} for {pt} {which}, got {k['name']}")  # fmt: skip
            nbytes += k["dram__bytes_read.sum"]
            ns += k["gpu__time_duration.sum"]
        measured[pt, which] = (nbytes, ns)
    for pt, which in plan(args.prompt, args.generated):
        if which != "op":
            continue
        must = must_read_bytes(pt)
        op_b, op_ns = measured[pt, "op"]
        sf = measured.get((pt, "straightforward"))
        sf_cols = f"{sf[0] / 2**20:.2f} | {sf[1] / 1e3:.1f}" if sf else "— | —"
        lines.append(
            f"| {pt.batch} | {pt.pattern} | {must / 2**20:.2f} | {op_b / 2**20:.2f} | "
            f"{op_b / must:.1f} | {op_ns / 1e3:.1f} | {sf_cols} |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
