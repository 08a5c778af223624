"""`specgate run --junitxml` and $GITHUB_STEP_SUMMARY against the fake engine: one JUnit test case
per request, failures carry the failing rows, and the markdown report is appended for CI."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from e2e_helpers import REPO, SPEC_ACCEPT_NUMS, fake_scenario


def specgate(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "specgate.cli", *args, "--root", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return {f"{c.get('classname')}::{c.get('name')}": c for c in root.iter("testcase")}


def test_junit_has_one_case_per_request_and_summary_is_appended(tmp_path: Path) -> None:
    engine = {"accept_nums": SPEC_ACCEPT_NUMS, "k": 5}
    fake_scenario(tmp_path, "hybrid", engine)
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    run = specgate(
        tmp_path,
        "run",
        "--skip-kernel",
        "--scenario",
        "hybrid",
        "--junitxml",
        "junit.xml",
        GITHUB_STEP_SUMMARY=str(summary),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    cases = _cases(tmp_path / "junit.xml")
    assert sorted(cases) == ["hybrid::hello/nonstream", "hybrid::hello/stream"], sorted(cases)
    assert all(len(case) == 0 for case in cases.values())  # no failure, no skip
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "hybrid" in text and "|" in text

    # Drift on every request: each request's test case fails and names the field.
    drifted = [5, 4] + [3] * 6 + [1] * 5 + [2] * 20 + [1] * 18
    fake_scenario(tmp_path, "hybrid", {"accept_nums": drifted, "k": 5})
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid", "--junitxml", "j.xml")
    assert run.returncode == 1
    cases = _cases(tmp_path / "j.xml")
    for case in cases.values():
        failure = case.find("failure")
        assert failure is not None and "accepted_tokens_per_head" in failure.text


def test_junit_scenario_without_baseline_is_one_failing_case(tmp_path: Path) -> None:
    fake_scenario(tmp_path, "nobase", {"accept_nums": SPEC_ACCEPT_NUMS, "k": 5})
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "nobase", "--junitxml", "j.xml")
    assert run.returncode == 1
    cases = _cases(tmp_path / "j.xml")
    assert list(cases) == ["nobase::nobase"]
    assert "baseline" in cases["nobase::nobase"].find("failure").text
