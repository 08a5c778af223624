"""The gate catches regressions: the committed hybrid baseline, measured against a refserver whose
n-gram sizes or K were changed, must fail the comparison with a readable report.

This is the user's situation exactly: the server under test changed, the scenario did not (so the
scenario hash still matches and the failure comes from the values, not from a stale baseline).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from e2e_helpers import REPO

from e2e.baseline import load_baseline
from e2e.report import render_text
from e2e.runner import ScenarioResult, compare_with_baseline, measure
from e2e.scenario import load_scenario
from e2e.server import ServerProcess

pytestmark = pytest.mark.e2e

SCENARIOS = REPO / "scenarios"


def _with_config(command: tuple[str, ...], change: dict) -> tuple[str, ...]:
    words = list(command)
    i = words.index("--speculative-config") + 1
    words[i] = json.dumps({**json.loads(words[i]), **change}, separators=(",", ":"))
    return tuple(words)


@pytest.mark.parametrize(
    ("scenario_name", "change", "moved_fields"),
    [
        # K 5 -> 4: per-head lists get shorter and rejected_tokens = steps*(K+1) - accepted moves.
        pytest.param(
            "refserver-hybrid",
            {"num_speculative_tokens": 4},
            {"accepted_tokens_per_head", "accept_ratio_per_head", "rejected_tokens"},
            id="hybrid-K=4",
        ),
        # n-gram sizes 3..1 -> 1..1: other drafts, so other step counts.
        pytest.param(
            "refserver-ngram",
            {"max_ngram_size": 1, "min_ngram_size": 1},
            {"rejected_tokens"},
            id="ngram-sizes-1..1",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_changed_server_fails_the_committed_baseline(
    tmp_path: Path, scenario_name: str, change: dict, moved_fields: set[str]
) -> None:
    scenario = load_scenario(SCENARIOS / f"{scenario_name}.yaml")
    baseline = load_baseline(scenario.baseline)
    assert baseline.scenario_hash == scenario.hash, "committed baseline is stale"
    changed = replace(scenario.server, command=_with_config(scenario.server.command, change))
    nonstream = tuple(r for r in scenario.requests if not r.stream and not r.body.get("logprobs"))
    subset = replace(scenario, requests=nonstream[:2])
    started = time.monotonic()
    with ServerProcess(changed, tmp_path, name="changed-refserver") as server:
        endpoint = server.endpoint()
        outcomes = measure(subset, endpoint)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    rows = compare_with_baseline(subset, outcomes, baseline, only_measured=True)
    result = ScenarioResult(
        scenario.name,
        str(scenario.path),
        "metrics",
        "failed" if not all(r.ok for r in rows) else "passed",
        rows=rows,
        outcomes=outcomes,
        server=endpoint.command or "",
        baseline_path=str(scenario.baseline),
        baseline_provenance=baseline.provenance,
        duration_s=time.monotonic() - started,
    )
    report = render_text([result])
    print(report)  # the readable report, shown with -s and kept in the test log
    assert result.status == "failed", report
    failing = {r.field for r in rows if not r.ok}
    assert moved_fields <= failing, report
    assert f"[FAILED] {scenario_name}" in report
    failing_line = next(
        line
        for line in report.splitlines()
        if " FAIL" in line and any(f in line for f in moved_fields)
    )
    assert "exact" in failing_line or "abs" in failing_line  # the tolerance column is shown
