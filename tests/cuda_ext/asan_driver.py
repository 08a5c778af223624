"""Driver for the AddressSanitizer run of the CPU kernel (see test_asan.py).

Loads the ASan build of the CPU library given on the command line (only that one, so the
schema is defined once), runs valid batches against the oracle and invalid ones that must be
rejected, and exits non-zero on any mismatch. ASan aborts the process on any bad access.
"""

from __future__ import annotations

import sys

import torch

import refimpl
from refimpl.generate import RECIPES, case_seed, generate
from tests.cuda_ext.helpers import fixed_shape_batch, outputs_of, wild_batch

SEED = 20261127


def main(library: str) -> int:
    torch.ops.load_library(library)

    def op(*args, **kwargs):
        torch.ops.specgate.hybrid_mtp_ngram(*args, kwargs["threshold"], kwargs["pad_to_max"])

    bad = checked = rejected = 0
    batches = [generate(r, case_seed(SEED, r, i)) for r in RECIPES
               if not r.startswith(("batch_", "long_", "wide_")) for i in range(8)]  # fmt: skip
    gen = torch.Generator().manual_seed(SEED)
    batches += [
        fixed_shape_batch(gen, 40, 300, 90, k=5, vocab=3, pad_to_max=True) for _ in range(10)
    ]
    for batch in batches:
        checked += 1
        same = all(torch.equal(a, b) for a, b in zip(
            outputs_of(refimpl.hybrid_mtp_ngram, batch), outputs_of(op, batch), strict=True))  # fmt: skip
        bad += not same
    for _ in range(40):  # arbitrary values: rejected before any read, never an overflow
        try:
            outputs_of(op, wild_batch(gen, 30, 64, 40, k=4))
        except (ValueError, RuntimeError):
            rejected += 1
    print(f"asan_driver: {checked} valid batches, {bad} mismatches; {rejected}/40 wild rejected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
