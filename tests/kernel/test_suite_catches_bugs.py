"""The kernel suite finds real bugs: run it, as a user would, on each deliberately broken copy.

Each run is `specgate kernel --impl tests.kernel.broken:<bug> -x` in a subprocess (quick
profile, the packaged suite); it must exit 1 with a mismatch report and a reproduce command. The
same implementation with no bug switched on must exit 0, so the failures come from the bugs alone.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernel import broken

ROOT = Path(__file__).resolve().parents[2]


def _run_suite(impl: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "specgate.cli", "kernel", "-x", "--impl", impl, *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("bug", broken.BUGS)
def test_suite_reports_broken_implementation(bug):
    result = _run_suite(f"tests.kernel.broken:{bug}")
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"the suite did not fail on {bug}:\n{output[-3000:]}"
    assert "differs from the oracle" in output or "vector '" in output, output[-3000:]
    assert re.search(r"reproduce: pytest -m kernel --pyargs '?specgate\.kernel_suite\.", output), (
        output[-3000:]
    )
    assert f"implementation under test tests.kernel.broken:{bug}" in output, output[:2000]


def test_suite_passes_the_same_implementation_without_bugs():
    result = _run_suite("tests.kernel.broken:no_bug")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
