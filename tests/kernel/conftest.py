"""Fixtures of the kernel suite: the implementation under test, the profile, the seed, the device."""

from __future__ import annotations

import random
import shlex

import pytest
import torch

from refimpl import impls

DEFAULT_SEED = 20261127
KERNEL_SEED = pytest.StashKey[int]()  # resolved once per session, "random" included


def pytest_configure(config):
    seed = config.getoption("--kernel-seed")
    if seed == "random":
        seed = random.SystemRandom().randrange(2**31)
    elif seed is None:
        seed = DEFAULT_SEED
    else:
        try:
            seed = int(seed)
        except ValueError:
            raise pytest.UsageError(
                f"--kernel-seed {seed!r}: expected an integer or 'random'"
            ) from None
    config.stash[KERNEL_SEED] = seed
    if config.getoption("--kernel-device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--kernel-device cuda: torch.cuda.is_available() is False here")


def pytest_report_header(config):
    return (
        f"kernel suite: --impl {config.getoption('--impl') or '(default: op, else oracle)'} "
        f"--kernel-profile {config.getoption('--kernel-profile')} "
        f"--kernel-seed {config.stash[KERNEL_SEED]} --kernel-device {config.getoption('--kernel-device')}"
    )


@pytest.fixture(scope="session")
def kernel_device(pytestconfig) -> str:
    return pytestconfig.getoption("--kernel-device")


@pytest.fixture(scope="session")
def impl(pytestconfig, kernel_device) -> impls.Impl:
    spec = pytestconfig.getoption("--impl")
    try:
        return impls.load(spec) if spec else impls.default(kernel_device)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def kernel_seed(pytestconfig) -> int:
    return pytestconfig.stash[KERNEL_SEED]


@pytest.fixture(scope="session")
def kernel_profile(pytestconfig) -> str:
    return pytestconfig.getoption("--kernel-profile")


@pytest.fixture(scope="session")
def reproduce(pytestconfig, impl, kernel_seed, kernel_device):
    """Build the one-line command that re-runs one test node with the same settings."""

    def command(nodeid: str) -> str:
        args = [
            "pytest", "-m", "kernel", nodeid, "--impl", impl.name,
            "--kernel-profile", pytestconfig.getoption("--kernel-profile"),
            "--kernel-seed", str(kernel_seed), "--kernel-device", kernel_device,
        ]  # fmt: skip
        return shlex.join(args)

    return command
