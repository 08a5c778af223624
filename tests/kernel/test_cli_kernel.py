"""`specgate kernel` as an engine team runs it: from their own directory, against their module."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from specgate.cli import main

ROOT = Path(__file__).resolve().parents[2]
KERNELS = """
import refimpl

def hybrid(*args, **kwargs):
    refimpl.hybrid_mtp_ngram(*args, **kwargs)

NOT_CALLABLE = 3

def two_args(a, b):
    pass
"""


@pytest.fixture
def engine_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mykernels").mkdir()
    (tmp_path / "mykernels" / "__init__.py").write_text("")
    (tmp_path / "mykernels" / "ngram.py").write_text(KERNELS)
    (tmp_path / "broken_import.py").write_text("raise RuntimeError('needs the GPU runtime')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nosuch.mod:fn", "cannot import module 'nosuch.mod'"),
        ("broken_import:fn", "RuntimeError: needs the GPU runtime"),
        ("mykernels.ngram:missing", "module 'mykernels.ngram'"),
        ("mykernels.ngram:NOT_CALLABLE", "not callable"),
        ("mykernels.ngram:two_args", "does not take the op's arguments"),
        ("mykernels.ngram", "expected module:function"),
    ],
)
def test_bad_impl_is_a_usage_error_naming_the_module(engine_repo, capsys, spec, expected):
    assert main(["kernel", "--impl", spec]) == 2
    err = capsys.readouterr().err
    assert expected in err and spec in err, err


def test_bad_seed_is_a_usage_error(engine_repo, capsys):
    assert main(["kernel", "--impl", "mykernels.ngram:hybrid", "--seed", "abc"]) == 2
    assert "--seed 'abc'" in capsys.readouterr().err


def test_runs_from_the_engine_repo_with_junit_and_report(engine_repo: Path):
    summary = engine_repo / "summary.md"
    result = subprocess.run(
        [sys.executable, "-m", "specgate.cli", "kernel", "--impl", "mykernels.ngram:hybrid",
         "-k", "test_vector", "--junitxml", "k.xml", "--report", "k.md", "--seed", "5"],
        cwd=engine_repo, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header = "implementation under test mykernels.ngram:hybrid (given with --impl); device cpu"
    assert header in result.stdout and "profile quick; seed 5" in result.stdout, result.stdout
    cases = list(ET.parse(engine_repo / "k.xml").getroot().iter("testcase"))
    assert len(cases) >= 40 and all(c.get("name").startswith("test_vector[") for c in cases)
    assert all(c.find("failure") is None for c in cases)
    assert "result: conforms" in (engine_repo / "k.md").read_text()
    assert "result: conforms" in summary.read_text()


def test_no_tests_selected_is_a_failure_not_a_pass(engine_repo: Path):
    result = subprocess.run(
        [sys.executable, "-m", "specgate.cli", "kernel", "--impl", "mykernels.ngram:hybrid",
         "-k", "no_such_test_name"],
        cwd=engine_repo, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr or "FAILED" in result.stdout
