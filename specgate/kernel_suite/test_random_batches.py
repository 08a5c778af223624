"""The implementation under test against the oracle on seeded random batches (refimpl.generate).

The plan (recipes and counts) comes from the profile; every batch has its own seed, printed on
failure together with one command that reproduces it.
"""

from __future__ import annotations

import pytest

from refimpl import PLANS, case_seed, check, generate, report


def _cases(profile: str) -> list[tuple[str, int]]:
    return [(recipe, i) for recipe, count in PLANS[profile].items() for i in range(count)]


def pytest_generate_tests(metafunc):
    if "random_case" in metafunc.fixturenames:
        cases = _cases(metafunc.config.getoption("--kernel-profile"))
        metafunc.parametrize("random_case", cases, ids=[f"{r}-{i:04d}" for r, i in cases])


@pytest.mark.kernel
def test_random_batch(random_case, impl, kernel_seed, kernel_device, reproduce, request):
    recipe, index = random_case
    seed = case_seed(kernel_seed, recipe, index)
    batch = generate(recipe, seed)
    mismatches = check(impl.fn, batch.to(kernel_device))
    if mismatches:
        standalone = (
            f"python -m refimpl.repro --impl {impl.name} --recipe {recipe} --seed {seed} "
            f"--device {kernel_device}"
        )
        pytest.fail(
            report(batch, mismatches, impl.name, reproduce(request.node))
            + f"\n       or: {standalone}",
            pytrace=False,
        )
