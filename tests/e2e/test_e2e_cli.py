"""The CLI end to end against the fake engine: baseline update (diff, dry run, refusal, atomicity,
interruption), run (pass, fail, stale baseline, markdown) and report."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from e2e_helpers import REPO, SPEC_ACCEPT_NUMS, fake_scenario, survivors

from e2e.baseline import load_baseline


def specgate(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "specgate.cli", *args, "--root", str(tmp_path)]
        if args[0] != "report"
        else [sys.executable, "-m", "specgate.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def engine(tmp_path: Path, name: str, **config) -> None:
    """Rewrite the fake engine's config of scenario `name` (the scenario file stays the same)."""
    path = tmp_path / f"{name}-engine.json"
    import json

    path.write_text(json.dumps({"accept_nums": SPEC_ACCEPT_NUMS, "k": 5, **config}))


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    return fake_scenario(tmp_path, "hybrid", {"accept_nums": SPEC_ACCEPT_NUMS, "k": 5})


def test_update_writes_a_baseline_with_provenance_then_run_passes(
    tmp_path: Path, scenario: Path
) -> None:
    done = specgate(tmp_path, "baseline", "update", "hybrid")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "new baseline for hybrid (2 requests)" in done.stdout
    baseline = load_baseline(tmp_path / "baselines" / "hybrid.yaml")
    fields = baseline.requests["hello/stream"]["fields"]
    assert fields["accepted_tokens_per_head"] == [51, 33, 13, 2, 1, 0]
    assert fields["rejected_tokens"] == 206 and fields["accepted_tokens"] == 100
    for key in (
        "date",
        "git_commit",
        "host",
        "device",
        "torch",
        "python",
        "server_command",
        "scenario_hash",
    ):
        assert baseline.provenance.get(key), key
    assert "{port}" in baseline.provenance["server_command"]

    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid", "--report", "r.md")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[PASSED] hybrid" in run.stdout
    assert (
        "| hello/stream | accepted_tokens_per_head | [51, 33, 13, 2, 1, 0] |"
        in (tmp_path / "r.md").read_text()
    )
    report = specgate(tmp_path, "report")
    assert report.returncode == 0 and "[PASSED] hybrid" in report.stdout


def test_update_run_and_compare_measure_share_one_measurement(
    tmp_path: Path, scenario: Path
) -> None:
    """`baseline update`, `run` and `compare --measure` go through runner.measure_metrics: what
    compare measures now is the table of the baseline that update wrote, and run passes on it."""
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    from_baseline = specgate(tmp_path, "compare", "hybrid")
    measured = specgate(tmp_path, "compare", "hybrid", "--measure")
    assert from_baseline.returncode == 0 and measured.returncode == 0, measured.stderr
    assert "hello/stream" in measured.stdout
    assert measured.stdout == from_baseline.stdout
    ran = specgate(tmp_path, "run", "--scenario", "hybrid", "--skip-kernel")
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_drift_beyond_tolerance_fails_run_and_dry_run_shows_the_diff(
    tmp_path: Path, scenario: Path
) -> None:
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    before = (tmp_path / "baselines" / "hybrid.yaml").read_bytes()
    # 5 steps that accepted 3 tokens now accept 1: heads 1 and 2 drop by 5 (> tolerance 2).
    drifted = [5, 4] + [3] * 6 + [1] * 5 + [2] * 20 + [1] * 18
    engine(tmp_path, "hybrid", accept_nums=drifted)
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid")
    assert run.returncode == 1
    assert "[FAILED] hybrid" in run.stdout
    assert "FAIL: [1] 28 vs 33, [2] 8 vs 13" in run.stdout
    assert "FAIL: diff -10" in run.stdout  # accepted_tokens: exact

    dry = specgate(tmp_path, "baseline", "update", "hybrid", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "accepted_tokens_per_head: [51, 33, 13, 2, 1, 0] -> [51, 28, 8, 2, 1, 0]" in dry.stdout
    assert "accepted_tokens: 100 -> 90 (-10)" in dry.stdout
    assert "dry run:" in dry.stdout
    assert (tmp_path / "baselines" / "hybrid.yaml").read_bytes() == before


def test_update_refuses_to_write_when_an_invariant_fails(tmp_path: Path, scenario: Path) -> None:
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    before = (tmp_path / "baselines" / "hybrid.yaml").read_bytes()
    engine(tmp_path, "hybrid", corrupt={"accepted_tokens_per_head": [51, 33, 13, 2, 3, 0]})
    done = specgate(tmp_path, "baseline", "update", "hybrid")
    assert done.returncode == 1
    assert "NOT written" in done.stderr
    assert "per_head_non_increasing" in done.stderr
    assert (tmp_path / "baselines" / "hybrid.yaml").read_bytes() == before


def test_interrupted_update_leaves_the_old_baseline_and_no_server(
    tmp_path: Path, scenario: Path
) -> None:
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    path = tmp_path / "baselines" / "hybrid.yaml"
    before = path.read_bytes()
    engine(tmp_path, "hybrid", delay_s=30, accept_nums=[1, 1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "specgate.cli",
            "baseline",
            "update",
            "hybrid",
            "--root",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(4)  # server up, first request in flight
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["hybrid.yaml"]  # no temporary file left
    assert not survivors(str(tmp_path / "hybrid-engine.json"), 5)


def test_stale_baseline_fails_with_the_update_command(tmp_path: Path, scenario: Path) -> None:
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    data = yaml.safe_load(scenario.read_text())
    data["request_defaults"]["max_tokens"] = 32
    scenario.write_text(yaml.safe_dump(data))
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid")
    assert run.returncode == 1
    assert "stale baseline" in run.stdout
    assert f"specgate baseline update {scenario.resolve()}" in run.stdout


def test_missing_baseline_and_malformed_scenario(tmp_path: Path, scenario: Path) -> None:
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid")
    assert run.returncode == 1 and "no baseline yet" in run.stdout
    bad = tmp_path / "scenarios" / "broken.yaml"
    bad.write_text("name: broken\nserver: {url: http://x}\nrequests: []\nbaseline: b.yaml\n")
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "broken")
    assert run.returncode == 2
    assert "broken.yaml: key 'requests': expected a non-empty list" in run.stderr


def test_server_url_reuses_a_running_server(tmp_path: Path, scenario: Path) -> None:
    from e2e.scenario import load_scenario
    from e2e.server import ServerProcess

    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    with ServerProcess(load_scenario(scenario).server, tmp_path / "logs") as server:
        run = specgate(
            tmp_path, "run", "--skip-kernel", "--scenario", "hybrid", "--server-url", server.url
        )
    assert run.returncode == 0, run.stdout
    assert f"server: {server.url}" in run.stdout


def test_parser_and_help() -> None:
    from specgate.cli import build_parser, main

    assert main([]) == 0  # prints help
    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline"])  # an action is required
    args = build_parser().parse_args(["baseline", "update", "a", "b", "--dry-run"])
    assert args.scenarios == ["a", "b"] and args.dry_run
    assert "serve" in build_parser().format_help()


def test_serve_delegates_to_refserver(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "specgate.cli", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--speculative-config" in done.stdout and "refserver" in done.stdout


def test_report_without_results_is_a_usage_error(tmp_path: Path) -> None:
    done = specgate(tmp_path, "report")
    assert done.returncode == 2 and "run `specgate run` first" in done.stderr


# --- malformed input stops the gate before any request (issue 10) ----------------------------


def _logged_scenario(tmp_path: Path) -> tuple[Path, Path]:
    """The hybrid scenario with a fake engine that logs every launch (to prove none happened)."""
    starts = tmp_path / "starts.log"
    config = {"accept_nums": SPEC_ACCEPT_NUMS, "k": 5, "start_log": str(starts)}
    return fake_scenario(tmp_path, "hybrid", config), starts


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (
            lambda text: text.replace("accepted_tokens: 100", "accepted_tokens: '48'", 1),
            "fields.accepted_tokens': expected a number or a list of numbers, got '48'",
        ),
        (
            lambda text: text.replace("accept_ratio: 0.49", "accept_ratio: abc", 1),
            "fields.accept_ratio': expected a number or a list of numbers, got 'abc'",
        ),
        (lambda text: text + "scenario: again\n", "key 'scenario' appears twice"),
        (lambda text: text.encode() + b"\xc3\x28", "not UTF-8 text (byte 0xc3 at offset"),
    ],
)
def test_malformed_baseline_exits_2_before_any_request(
    tmp_path: Path, corrupt, expected: str
) -> None:
    _, starts = _logged_scenario(tmp_path)
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    starts.unlink()
    path = tmp_path / "baselines" / "hybrid.yaml"
    bad = corrupt(path.read_text())
    path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    run = specgate(tmp_path, "run", "--scenario", "hybrid")  # kernel step included: not reached
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"error: {path}: " in run.stderr and expected in run.stderr
    assert "kernel conformance" not in run.stdout
    assert not starts.exists()  # no server was launched, so no request was sent


def test_request_key_typo_exits_2_before_any_request(tmp_path: Path) -> None:
    scenario, starts = _logged_scenario(tmp_path)
    scenario.write_text(scenario.read_text().replace("max_tokens: 128", "max_tokns: 128"))
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "key 'request_defaults.max_tokns'" in run.stderr
    assert "(did you mean 'max_tokens'?)" in run.stderr
    assert not starts.exists()


def test_a_server_killed_mid_run_counts_its_failed_requests(tmp_path: Path, scenario: Path) -> None:
    assert specgate(tmp_path, "baseline", "update", "hybrid").returncode == 0
    engine(tmp_path, "hybrid", exit_after=1)  # answers the first request, then dies
    run = specgate(tmp_path, "run", "--skip-kernel", "--scenario", "hybrid", "--report", "r.md")
    assert run.returncode == 1, run.stdout + run.stderr
    # 7 rows of the answered request, and one failing row for the one that got no answer
    assert "[FAILED] hybrid (metrics," in run.stdout and "1/8 rows failing)" in run.stdout
    assert re.search(r"hello/stream +\* +in baseline +- +- +FAIL: request failed", run.stdout)
    assert "| hello/stream | * | in baseline | - | - | **FAIL: request failed** |" in (
        (tmp_path / "r.md").read_text()
    )
