"""pytest-benchmark entry for the op (``pytest -m benchmark benchmarks/bench_op.py``).

The CPU op against the oracle on B=64 x 4K (no match: the whole haystack is scanned), and on a
GPU the CUDA op at two sweep points. The full sweep with the plain-torch peer and bandwidth
numbers is ``python -m benchmarks.op_sweep`` (see cuda_ext/NOTES.md). No timing is asserted.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.op_sweep import ARG_ORDER, MAX_N, MIN_N, K, Point, make_inputs

pytestmark = pytest.mark.benchmark


def _args(point: Point, device: str):
    inp = make_inputs(point, device, torch.Generator().manual_seed(1))
    return [inp[k] for k in ARG_ORDER], inp["threshold"]


def _run(fn, args, threshold):
    work = [a.clone() for a in args]  # fresh outputs: the op is in place
    fn(*work, MAX_N, MIN_N, K, threshold=threshold)


@pytest.fixture(scope="module")
def cpu_args():
    import cuda_ext

    if not cuda_ext.is_available("cpu"):
        pytest.skip("the CPU op is not built")
    return _args(Point(64, 4096, 256, "none"), "cpu")


def test_cpu_op_b64x4k(benchmark, cpu_args):
    import cuda_ext

    benchmark.group = "cpu op vs oracle, B=64 x 4K"
    benchmark(_run, cuda_ext.hybrid_mtp_ngram, *cpu_args)


def test_oracle_b64x4k(benchmark, cpu_args):
    import refimpl

    benchmark.group = "cpu op vs oracle, B=64 x 4K"
    benchmark.pedantic(_run, args=(refimpl.hybrid_mtp_ngram, *cpu_args), rounds=3, iterations=1)


@pytest.mark.cuda
@pytest.mark.parametrize("point", [Point(256, 8192, 256, "early"), Point(1024, 32768, 256, "none")],
                         ids=str)  # fmt: skip
def test_cuda_op(benchmark, point):
    import cuda_ext

    if not torch.cuda.is_available() or not cuda_ext.is_available("cuda"):
        pytest.skip("no CUDA device or the CUDA op is not built")
    args, threshold = _args(point, "cuda")

    def call():
        _run(cuda_ext.hybrid_mtp_ngram, args, threshold)
        torch.cuda.synchronize()

    benchmark(call)
