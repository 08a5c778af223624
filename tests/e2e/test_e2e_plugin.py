"""The pytest side of the gate, run as a real nested pytest: discovery by --scenario, one server per
configuration, failure messages with the report table, --report, skips, and xdist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e_helpers import REPO, SPEC_ACCEPT_NUMS, fake_scenario, fake_server

from e2e.scenario import load_scenario
from e2e.server import ServerPool


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(REPO / "specgate/e2e_suite/test_scenarios.py"),
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
        *args,
    ]
    return subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def make_baseline(path: Path) -> None:
    from e2e.baseline import collect_provenance, write_baseline_atomic
    from e2e.runner import build_baseline, measure

    scenario = load_scenario(path)
    pool = ServerPool(path.parent / "logs")
    try:
        outcomes = measure(scenario, pool.endpoint(scenario.server))
    finally:
        pool.close()
    prov = collect_provenance(scenario.path, scenario.hash, None, "test")
    write_baseline_atomic(scenario.baseline, build_baseline(scenario, outcomes, prov))


def test_one_server_per_configuration_and_report(tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    engine = {"accept_nums": SPEC_ACCEPT_NUMS, "k": 5, "start_log": str(starts)}
    server = fake_server(tmp_path, engine, "shared")
    shared = fake_scenario(tmp_path, "shared-a", engine, server=server)
    # Same server configuration as shared-a, different requests.
    other = fake_scenario(
        tmp_path,
        "shared-b",
        engine,
        server=server,
        requests=[{"id": "x", "messages": [{"role": "user", "content": "yo"}]}],
    )
    alone = fake_scenario(tmp_path, "alone", {**engine, "accept_nums": [1, 2, 3]})
    for path in (shared, other, alone):
        make_baseline(path)
    starts.write_text("")
    report = tmp_path / "report.md"
    done = run_pytest(
        tmp_path,
        "--scenario",
        str(shared),
        "--scenario",
        str(alone),
        "--scenario",
        str(other),
        "--report",
        str(report),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    assert len(starts.read_text().split()) == 2, "shared-a and shared-b must share one server"
    assert "## ✅ shared-b — passed" in report.read_text()


def test_failure_message_is_the_comparison_report(tmp_path: Path) -> None:
    path = fake_scenario(tmp_path, "drift", {"accept_nums": SPEC_ACCEPT_NUMS, "k": 5})
    make_baseline(path)
    (tmp_path / "drift-engine.json").write_text('{"accept_nums": [1, 2, 3], "k": 5}')
    done = run_pytest(tmp_path, "--scenario", str(path))
    assert done.returncode == 1
    assert "[FAILED] drift" in done.stdout
    assert "request" in done.stdout and "tolerance" in done.stdout and "verdict" in done.stdout
    assert "hello/stream     accepted_tokens_per_head  [51, 33, 13, 2, 1, 0]" in done.stdout


def test_missing_engine_skips_with_the_reason(tmp_path: Path) -> None:
    path = fake_scenario(
        tmp_path,
        "absent",
        {},
        server={"command": ["no-such-engine-xyz", "serve", "--port", "{port}"]},
    )
    done = run_pytest(tmp_path, "--scenario", str(path))
    assert done.returncode == 0, done.stdout
    assert "command 'no-such-engine-xyz' is not installed" in done.stdout


def test_xdist_workers_get_distinct_ports(tmp_path: Path) -> None:
    paths = [
        fake_scenario(tmp_path, f"x{i}", {"accept_nums": [1, 2, i + 1], "k": 5}) for i in range(3)
    ]
    for path in paths:
        make_baseline(path)
    args = [a for p in paths for a in ("--scenario", str(p))]
    done = run_pytest(tmp_path, "-n", "2", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
