"""pytest-benchmark entry for the op (``pytest -m benchmark benchmarks/bench_op.py``).

The CPU op against the oracle on B=64 x 4K (no match: the whole haystack is scanned), and on a
GPU the CUDA op at two sweep points. Every benchmark first checks the outputs of what it times
against a reference (the CPU op and the oracle against each other; the CUDA op against the
oracle, or the CPU op where the oracle is too slow) and fails when they differ: a fast wrong
answer is not a result. The full sweep with the plain-torch peer and bandwidth numbers is
``python -m benchmarks.op_sweep`` (see cuda_ext/NOTES.md). No timing is asserted.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from benchmarks.op_sweep import Point, call, copy_of, difference, make_inputs, reference
from refimpl import impls

pytestmark = pytest.mark.benchmark
CPU_POINT = Point(64, 4096, 256, "none")
SEED = 1


def _inputs(point: Point, device: str) -> dict:
    print(f"seed={SEED}")
    return make_inputs(point, device, torch.Generator().manual_seed(SEED))


def checked(what: str, fn: Callable, inp: dict, ref_name: str, want: tuple) -> None:
    """Fail the benchmark when `fn`'s outputs on `inp` differ from the reference's `want`."""
    problem = difference(want, inp, fn)
    if problem is not None:
        pytest.fail(f"{what} differs from the {ref_name}, not timed: {problem}")


def _run(fn: Callable, inp: dict) -> None:
    call(fn, copy_of(inp))  # fresh outputs every call: the op is in place


@pytest.fixture(scope="module")
def cpu_inputs() -> dict:
    """The CPU point's inputs, once the CPU op and the oracle (its reference) agree on them."""
    import cuda_ext

    if not cuda_ext.is_available("cpu"):
        pytest.skip("the CPU op is not built")
    inp = _inputs(CPU_POINT, "cpu")
    checked("the CPU op", cuda_ext.hybrid_mtp_ngram, inp, *reference(CPU_POINT, inp))
    return inp


def test_cpu_op_b64x4k(benchmark, cpu_inputs):
    import cuda_ext

    benchmark.group = "cpu op vs oracle, B=64 x 4K"
    benchmark(_run, cuda_ext.hybrid_mtp_ngram, cpu_inputs)


def test_oracle_b64x4k(benchmark, cpu_inputs):
    benchmark.group = "cpu op vs oracle, B=64 x 4K"
    oracle = impls.load(impls.ORACLE).fn
    benchmark.pedantic(_run, args=(oracle, cpu_inputs), rounds=3, iterations=1)


@pytest.mark.cuda
@pytest.mark.parametrize("point", [Point(256, 8192, 256, "early"), Point(1024, 32768, 256, "none")],
                         ids=str)  # fmt: skip
def test_cuda_op(benchmark, point):
    import cuda_ext

    if not torch.cuda.is_available() or not cuda_ext.is_available("cuda"):
        pytest.skip("no CUDA device or the CUDA op is not built")
    inp = _inputs(point, "cuda")
    checked("the CUDA op", cuda_ext.hybrid_mtp_ngram, inp, *reference(point, inp))

    def once():
        _run(cuda_ext.hybrid_mtp_ngram, inp)
        torch.cuda.synchronize()

    benchmark(once)
