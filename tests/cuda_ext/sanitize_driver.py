"""Driver for compute-sanitizer (memcheck, racecheck): valid and wild batches through the CUDA op.

Run as ``PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python -m
tests.cuda_ext.sanitize_driver`` so that every tensor is its own allocation and an
out-of-bounds access cannot hide inside a cached block. Exits non-zero if a valid batch disagrees
with the CPU op. Not collected by pytest (not a test_*.py file).
"""

from __future__ import annotations

import sys

import torch

import cuda_ext
from refimpl.generate import case_seed, generate
from tests.cuda_ext.helpers import fixed_shape_batch, outputs_of, wild_batch

SEED = 20261127


def main() -> int:
    assert cuda_ext.is_available("cuda"), "CUDA op not built"
    op = cuda_ext.hybrid_mtp_ngram
    gen = torch.Generator().manual_seed(SEED)
    bad = 0
    cases = [generate(r, case_seed(SEED, r, i)) for r in ("mixed", "threshold_edge", "end_match")
             for i in range(3)]  # fmt: skip
    cases += [fixed_shape_batch(gen, b, s, p, k=5, vocab=v, pad_to_max=True)
              for (b, s, p, v) in [(1, 20000, 900, 3), (40, 3000, 500, 50), (3000, 40, 20, 3)]]  # fmt: skip
    for i, batch in enumerate(cases):
        want = outputs_of(op, batch)  # CPU op
        got = outputs_of(op, batch, "cuda")
        ok = all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
        bad += not ok
        print(f"valid batch {i}: B={batch.batch_size} {'ok' if ok else 'MISMATCH'}", flush=True)
    for i in range(12):
        batch = wild_batch(gen, batch=1 + 37 * i, s_all=1 + 500 * i, s_pre=1 + 90 * i, k=4)
        outputs_of(op, batch, "cuda")  # values are not checked on CUDA: all must stay in bounds
        torch.cuda.synchronize()
        print(f"wild batch {i}: B={batch.batch_size} ran", flush=True)
    print(f"sanitize_driver: {len(cases)} valid batches, {bad} mismatches; 12 wild batches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
