"""specgate's pytest plugin, registered with the ``pytest11`` entry point ``specgate``.

It makes both suites run from any repository where specgate is installed:

- the kernel suite (``specgate/kernel_suite``): ``pytest -m kernel --impl mypkg.ops:fn``;
- the e2e gate (``specgate/e2e_suite``): ``pytest -m e2e --scenario mine.yaml``.

``--impl`` adds the kernel suite to the run and ``--scenario`` the e2e suite, unless the paths
given to pytest already hold them (as in this repository, whose testpaths name ``specgate``).
This module only imports torch and the harness when a suite needs them, so having specgate
installed costs other pytest runs nothing.
"""

from __future__ import annotations

import random
import shlex
import sys
from pathlib import Path

import pytest

KERNEL_SUITE = Path(__file__).resolve().parent / "kernel_suite"
E2E_SUITE = Path(__file__).resolve().parent / "e2e_suite"
DEFAULT_SEED = 20261127
MARKERS = {
    "kernel": "conformance of a hybrid_mtp_ngram implementation against the oracle (SPEC §1)",
    "cuda": "needs a CUDA device and the CUDA build of the op; skipped elsewhere",
    "e2e": "launches or reaches a server and compares speculate_metrics with baselines (SPEC §2-3)",
}
KERNEL_SEED = pytest.StashKey[int]()  # resolved once per session, "random" included
KERNEL_IMPL = pytest.StashKey[object]()  # refimpl.impls.Impl, resolved once kernel tests run
E2E_SESSION = pytest.StashKey[object]()  # e2e.pytest_plugin.E2ESession


def pytest_addoption(parser: pytest.Parser) -> None:
    kernel = parser.getgroup("specgate kernel suite")
    kernel.addoption(
        "--impl",
        default=None,
        help="implementation under test, as module:function, imported with the current "
        "directory first on sys.path (adds the kernel suite to the run; default: the op "
        "cuda_ext, else the oracle refimpl, which SPECGATE_REQUIRE_OP=cpu|cuda forbids)",
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
        help="scenario name or YAML path to run (repeatable; adds the e2e suite to the run; "
        "default: every scenario in <rootdir>/scenarios)",
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


def _seed(config: pytest.Config) -> int:
    seed = config.getoption("--kernel-seed")
    if seed == "random":
        return random.SystemRandom().randrange(2**31)
    if seed is None:
        return DEFAULT_SEED
    try:
        return int(seed)
    except ValueError:
        raise pytest.UsageError(
            f"--kernel-seed {seed!r}: expected an integer or 'random'"
        ) from None


def _covers(arg: str, suite: Path, invocation_dir: Path) -> bool:
    """Whether a pytest argument (path, node id or --pyargs module) already holds `suite`."""
    target = arg.split("::", 1)[0]
    if target.startswith(f"specgate.{suite.name}") or target == "specgate":
        return True
    path = (invocation_dir / target).resolve()
    return path == suite or path in suite.parents or suite in path.parents


def _add_suite(config: pytest.Config, suite: Path) -> None:
    invocation_dir = config.invocation_params.dir
    if not any(_covers(str(arg), suite, invocation_dir) for arg in config.args):
        config.args.append(str(suite))


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    config.stash[KERNEL_SEED] = _seed(config)
    if config.getoption("--kernel-device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--kernel-device cuda: torch.cuda.is_available() is False here")
    if config.getoption("--impl"):
        _add_suite(config, KERNEL_SUITE)
    if config.getoption("--scenario"):
        _add_suite(config, E2E_SUITE)


# --- the kernel suite -------------------------------------------------------------------------


def resolve_impl(config: pytest.Config):
    """The implementation under test (a refimpl.impls.Impl). A bad --impl, or a missing op under
    SPECGATE_REQUIRE_OP, stops the run before any test (pytest's usage error, exit 4)."""
    if KERNEL_IMPL not in config.stash:
        from refimpl import impls

        spec = config.getoption("--impl")
        try:
            impl = impls.load(spec) if spec else impls.default(config.getoption("--kernel-device"))
        except (ValueError, RuntimeError) as exc:  # RuntimeError: cuda_ext.build.OpBuildError
            raise pytest.UsageError(str(exc)) from None
        config.stash[KERNEL_IMPL] = impl
    return config.stash[KERNEL_IMPL]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """With the final item list: resolve the implementation under test once kernel tests are
    selected (so the header can name it), and plan the e2e servers."""
    if any(item.get_closest_marker("kernel") for item in session.items):
        resolve_impl(session.config)
    if "e2e.pytest_plugin" in sys.modules:  # imported by generate_tests for scenario tests
        _e2e_session(session.config).plan(session.items)


def pytest_report_collectionfinish(config: pytest.Config, start_path: Path, items) -> list[str]:
    if KERNEL_IMPL not in config.stash:
        return []
    impl = config.stash[KERNEL_IMPL]
    return [
        f"kernel suite: implementation under test {impl.name} ({impl.how}); "
        f"device {config.getoption('--kernel-device')}; "
        f"profile {config.getoption('--kernel-profile')}; seed {config.stash[KERNEL_SEED]}"
    ]


@pytest.fixture(scope="session")
def kernel_device(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("--kernel-device")


@pytest.fixture(scope="session")
def impl(pytestconfig: pytest.Config):
    return resolve_impl(pytestconfig)


@pytest.fixture(scope="session")
def kernel_seed(pytestconfig: pytest.Config) -> int:
    return pytestconfig.stash[KERNEL_SEED]


@pytest.fixture(scope="session")
def kernel_profile(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("--kernel-profile")


def _node_argument(node) -> tuple[list[str], str]:
    """How to name one test on the command line from any directory: a test of the packaged suite
    as `--pyargs specgate.kernel_suite.module::test`, anything else by its node id."""
    if isinstance(node, str):
        return [], node
    path = Path(node.path)
    if path.parent == KERNEL_SUITE:
        return ["--pyargs"], f"specgate.{KERNEL_SUITE.name}.{path.stem}::{node.name}"
    return [], node.nodeid


@pytest.fixture(scope="session")
def reproduce(pytestconfig: pytest.Config, impl, kernel_seed: int, kernel_device: str):
    """Build the one-line command that re-runs one test (an item, or a node id) as it ran."""

    def command(node) -> str:
        flags, name = _node_argument(node)
        args = [
            "pytest", "-m", "kernel", *flags, name, "--impl", impl.name,
            "--kernel-profile", pytestconfig.getoption("--kernel-profile"),
            "--kernel-seed", str(kernel_seed), "--kernel-device", kernel_device,
        ]  # fmt: skip
        return shlex.join(args)

    return command


# --- the e2e gate -----------------------------------------------------------------------------


def _e2e_session(config: pytest.Config):
    """Created on first use, so runs without e2e tests never import the harness."""
    if E2E_SESSION not in config.stash:
        from e2e.pytest_plugin import E2ESession

        log_dir = config.rootpath / ".specgate-cache" / "pytest-logs"
        config.stash[E2E_SESSION] = E2ESession(config, log_dir)
    return config.stash[E2E_SESSION]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario_path" in metafunc.fixturenames:
        from e2e import pytest_plugin

        pytest_plugin.generate_tests(metafunc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "e2e.pytest_plugin" in sys.modules:  # imported by generate_tests for scenario tests
        sys.modules["e2e.pytest_plugin"].order_items(items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if E2E_SESSION in session.config.stash:
        e2e = session.config.stash[E2E_SESSION]
        e2e.finish()
        if e2e.results and not hasattr(
            session.config, "workerinput"
        ):  # xdist: once, not per worker
            from e2e.report import render_markdown
            from specgate.progress import append_step_summary

            append_step_summary(render_markdown(e2e.results))


@pytest.fixture(scope="session")
def e2e_session(pytestconfig: pytest.Config):
    return _e2e_session(pytestconfig)
