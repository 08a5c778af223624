"""Property test: the implementation under test equals the oracle on any small batch.

Hypothesis draws every token and length, so a failure shrinks to a minimal batch. The run is
seeded from --kernel-seed and prints the seed; the falsifying batch is printed row by row.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings

from refimpl import check, report
from refimpl.strategies import hybrid_batches

EXAMPLES = {"quick": 300, "full": 5000}


@pytest.mark.kernel
def test_matches_oracle_on_any_small_batch(impl, kernel_seed, kernel_profile, kernel_device):
    print(f"hypothesis seed: {kernel_seed}")

    @seed(kernel_seed)
    @settings(
        max_examples=EXAMPLES[kernel_profile],
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=hybrid_batches())
    def matches_oracle(batch):
        mismatches = check(impl.fn, batch.to(kernel_device))
        if mismatches:
            rows = "\n".join(batch.row_summary(b) for b in range(batch.batch_size))
            raise AssertionError(
                report(batch, mismatches, impl.name)
                + f"\nwhole batch (hypothesis seed {kernel_seed}):\n{rows}"
            )

    matches_oracle()
