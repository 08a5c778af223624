"""Command-line options shared by every test area. Fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations


def pytest_addoption(parser):
    kernel = parser.getgroup("specgate kernel suite")
    kernel.addoption(
        "--impl",
        default=None,
        help="implementation under test, as module:function (default: the op cuda_ext, "
        "falling back to the oracle refimpl when the op is not built)",
    )
    kernel.addoption(
        "--kernel-profile",
        default="quick",
        choices=("quick", "full"),
        help="quick: < 60 s even for pure Python (default); full: thousands of batches, large shapes",
    )
    kernel.addoption(
        "--kernel-seed",
        default=None,
        help="base seed of the random batches (default: fixed; 'random' draws one and prints it)",
    )
    kernel.addoption(
        "--kernel-device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="device the batches are placed on before calling the implementation",
    )

    e2e = parser.getgroup("specgate end-to-end suite")
    e2e.addoption(
        "--scenario",
        action="append",
        default=[],
        help="scenario name or YAML path to run (repeatable; default: every scenario found)",
    )
    e2e.addoption(
        "--server-url",
        default=None,
        help="reuse a running server at this base URL instead of launching the scenario's command",
    )
    e2e.addoption(
        "--report",
        default=None,
        help="write the e2e comparison report as markdown to this file",
    )
