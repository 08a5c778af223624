"""A failed op build is loud: the real build with an unusable compiler, in a fresh build folder
(SPECGATE_BUILD_DIR in tmp_path, so no cached library is reused).

Under SPECGATE_REQUIRE_OP=cpu every place that asks for the op fails with the compiler's output:
`import cuda_ext`, the kernel suite's default implementation and refserver's `--ngram-impl
auto`. Without it the fallback to the oracle is a warning and the suite's header says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIMULATED = "ngram_cpu.cpp:1:1: error: simulated compiler failure"


@pytest.fixture
def failing_cxx(tmp_path: Path) -> Path:
    """A compiler that answers torch's version probe but fails every compile with a message."""
    cxx = tmp_path / "cxx"
    cxx.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ] || [ "$1" = "-v" ]; then exec c++ "$@"; fi\n'
        f'echo "{SIMULATED}" >&2\n'
        "exit 1\n"
    )
    cxx.chmod(0o755)
    return cxx


def _python(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SPECGATE_REQUIRE_OP"}
    env = {**base, "PYTHONPATH": str(ROOT), "SPECGATE_BUILD_DIR": str(tmp_path / "build"), **env}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_cxx_false_fails_the_import_loudly(tmp_path: Path) -> None:
    result = _python(tmp_path, "import cuda_ext", CXX="false", SPECGATE_REQUIRE_OP="cpu")
    assert result.returncode != 0
    assert "OpBuildError: SPECGATE_REQUIRE_OP=cpu" in result.stderr, result.stderr
    assert "'false'" in result.stderr, result.stderr  # the compiler command that failed


def test_compiler_error_is_shown_everywhere_the_op_is_asked_for(
    tmp_path: Path, failing_cxx: Path
) -> None:
    env = {"CXX": str(failing_cxx), "SPECGATE_REQUIRE_OP": "cpu"}
    imported = _python(tmp_path, "import cuda_ext", **env)
    assert imported.returncode != 0 and SIMULATED in imported.stderr, imported.stderr

    kernel = _python(
        tmp_path, "from specgate.cli import main; raise SystemExit(main(['kernel']))", **env
    )
    assert kernel.returncode == 1, kernel.stdout + kernel.stderr
    assert SIMULATED in kernel.stderr and "error: SPECGATE_REQUIRE_OP=cpu" in kernel.stderr

    server = _python(
        tmp_path,
        "import torch; from refserver.drafting import resolve_impl; "
        "resolve_impl('auto', torch.device('cpu'))",
        **env,
    )
    assert server.returncode != 0 and SIMULATED in server.stderr, server.stderr


def test_without_the_requirement_the_fallback_is_said_loudly(
    tmp_path: Path, failing_cxx: Path
) -> None:
    code = (
        "from refimpl import impls; impl = impls.default('cpu'); "
        "print('NAME', impl.name); print('HOW', impl.how)"
    )
    result = _python(tmp_path, code, CXX=str(failing_cxx))
    assert result.returncode == 0, result.stderr
    assert "NAME refimpl:hybrid_mtp_ngram" in result.stdout
    assert "HOW NOT the op" in result.stdout and SIMULATED in result.stdout
    assert SIMULATED in result.stderr  # the build's warning carries the compiler's error


def test_bad_requirement_value_names_the_variable(tmp_path: Path) -> None:
    result = _python(tmp_path, "import cuda_ext", SPECGATE_REQUIRE_OP="gpu")
    assert result.returncode != 0
    assert "SPECGATE_REQUIRE_OP='gpu': expected 'cpu' or 'cuda'" in result.stderr


def test_specgate_run_kernel_step_fails_when_the_suite_cannot_run(
    tmp_path: Path, failing_cxx: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """`specgate run`'s kernel step: any non-zero exit of the suite is a failure, never a pass."""
    from specgate import cli

    monkeypatch.setenv("CXX", str(failing_cxx))
    monkeypatch.setenv("SPECGATE_REQUIRE_OP", "cpu")
    monkeypatch.setenv("SPECGATE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(tmp_path)
    assert cli._kernel_step() is False
    out, err = capfd.readouterr()
    assert "kernel conformance: FAILED (exit 1)" in out
    assert SIMULATED in err


def test_build_folder_is_per_installed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two copies of specgate (two checkouts, or a wheel beside a checkout) never share a build
    folder, so neither loads the other's library; the same copy always gets the same folder."""
    from cuda_ext import build

    monkeypatch.setenv("SPECGATE_BUILD_DIR", str(tmp_path))
    here = build.build_dir("cpu")
    assert build.build_dir("cpu") == here and here.parent == tmp_path
    monkeypatch.setattr(build, "CSRC", tmp_path / "other-checkout" / "cuda_ext" / "csrc")
    assert build.build_dir("cpu") != here
    assert build.build_dir("cpu").name.startswith(here.name.rsplit("-", 1)[0])
