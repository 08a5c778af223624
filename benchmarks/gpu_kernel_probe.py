"""GPU time of the candidate kernels for a decode step's layer linears and attention (CUDA).

    python -m benchmarks.gpu_kernel_probe [--out DIR]

Issue 13's measurement before changing the model: each variant is captured 30 times in one CUDA
graph (30 different weights or caches, as the 30 layers of a step, so the L2 cache holds none
of them) and the graph replayed; time per call = replay time / 30, median of the replays.

- linear: x [M, K] @ w.T for SmolLM2's layer weights (wqkv 960x576, wo 576x576, w13 3072x576,
  w2 576x1536) and output heads (49152x576 target, 8192x576 MTP draft vocabulary), M = 1 (a
  one-token step), 6 (K+1 verify tokens), 8, 48 (8 rows x 6): cuBLAS (F.linear) against
  `refserver.gpu_linear` (BLOCK_N 8/16/32); the error against float64 and whether a row's
  result depends on the other rows of the call.
- attention: T queries of 9 heads over a [L, 3, 64] cache window (GQA, float32): SDPA as the
  model called it (math backend: expands K/V) against `refserver.gpu_attention`.
Not a test; prints tables and writes DIR/kernel_probe.md.
"""

# ruff: noqa: B023 (each closure is timed in the iteration that defines it)
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from refserver import gpu_attention, gpu_linear  # noqa: E402

LAYERS = 30


def time_graph(fn, replays: int = 50) -> float:
    """us per call of `fn(i)` for i in range(LAYERS), captured as one graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            for i in range(LAYERS):
                fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(LAYERS):
            fn(i)
    for _ in range(5):
        g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / LAYERS)
    return statistics.median(times)


def probe_linears(lines: list[str]) -> None:
    shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536), (8192, 576), (49152, 576)]
    lines += ["## linear: us per call (graph of 30 calls on 30 weights)", ""]
    lines += [
        "| N x K | M | cuBLAS | rows BLOCK_N/2 | rows (default BLOCK_N) | rows 2 BLOCK_N | rel err rows | row-invariant |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for N, K in shapes:
        copies = 30 if N * K * 4 * 30 < 2**31 else 4
        ws = [torch.randn(N, K, device="cuda") * 0.05 for _ in range(copies)]
        for M in (1, 6, 8, 48):
            x = torch.randn(M, K, device="cuda")
            outs = [torch.empty(M, N, device="cuda") for _ in range(LAYERS)]
            cublas = time_graph(lambda i: torch.mm(x, ws[i % copies].T, out=outs[i]))
            row = [f"{N} x {K}", str(M), f"{cublas:.2f}"]
            err = inv = "-"
            base = gpu_linear.blocks(K)[0]
            for bn in (max(base // 2, 1), base, base * 2):
                if M > gpu_linear.MAX_ROWS:
                    row.append("-")
                    continue
                t = time_graph(
                    lambda i, bn=bn: gpu_linear.launch(x, ws[i % copies], outs[i], bn=bn)
                )
                row.append(f"{t:.2f}")
                y = gpu_linear.launch(x, ws[0], torch.empty(M, N, device="cuda"), bn=bn)
                ref = x.double() @ ws[0].double().T
                e = float((y.double() - ref).norm() / ref.norm())
                y1 = gpu_linear.launch(
                    x[M - 1 :].clone(), ws[0], torch.empty(1, N, device="cuda"), bn=bn
                )
                same = bool(torch.equal(y1[0], y[M - 1]))
                err, inv = f"{e:.1e}", ("yes" if same else "NO") if inv in ("-", "yes") else inv
            row += [err, inv]
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)


def probe_attention(lines: list[str]) -> None:
    H, Hkv, hd = 9, 3, 64
    lines += ["", "## attention: us per call (graph of 30 calls on 30 caches)", ""]
    lines += ["| B | T | L | SDPA as now (math, GQA) | gpu_attention kernel | max abs diff |"]
    lines += ["|---|---|---|---|---|---|"]
    for B, T, L in [(1, 1, 256), (1, 6, 256), (1, 1, 1024), (1, 6, 1024), (8, 1, 256), (8, 6, 256)]:
        caches = [
            (
                torch.randn(B, 2055, Hkv, hd, device="cuda"),
                torch.randn(B, 2055, Hkv, hd, device="cuda"),
            )
            for _ in range(LAYERS)
        ]
        q = torch.randn(B, T, H, hd, device="cuda")
        pos = torch.arange(150, 150 + T, device="cuda").repeat(B, 1)
        keys_idx = torch.arange(L, device="cuda")
        hidden = keys_idx[None, None, :] > pos[:, :, None]
        mask = torch.zeros(hidden.shape, device="cuda").masked_fill_(hidden, float("-inf"))[:, None]
        outs = [torch.empty(B, T, H * hd, device="cuda") for _ in range(LAYERS)]
        slots = torch.arange(B, device="cuda")

        def now(i):
            k, v = caches[i]
            with sdpa_kernel(
                [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
            ):
                o = F.scaled_dot_product_attention(
                    q.transpose(1, 2),
                    k[:, :L].transpose(1, 2),
                    v[:, :L].transpose(1, 2),
                    attn_mask=mask,
                    enable_gqa=True,
                )
            outs[i].copy_(o.transpose(1, 2).reshape(B, T, -1))

        def kernel(i):
            k, v = caches[i]
            outs[i].copy_(gpu_attention.launch(q, k, v, slots, pos, L).view(B, T, -1))

        row = [str(B), str(T), str(L), f"{time_graph(now):.2f}", f"{time_graph(kernel):.2f}"]
        now(0)
        a = outs[0].clone()
        kernel(0)
        row.append(f"{float((outs[0] - a).abs().max()):.1e}")
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = [f"# gpu_kernel_probe: {torch.cuda.get_device_name()}, torch {torch.__version__}", ""]
    probe_linears(lines)
    probe_attention(lines)
    Path(args.out, "kernel_probe.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
