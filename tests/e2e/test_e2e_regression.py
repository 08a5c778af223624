"""The gate catches regressions: the committed hybrid baseline, measured against a refserver whose
n-gram sizes or K were changed, must fail the comparison with a readable report.

This is the user's situation exactly: the server under test changed, the scenario did not (so the
scenario hash still matches and the failure comes from the values, not from a stale baseline).
"""

from __future__ import annotations

import json
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

HYBRID = REPO / "scenarios" / "refserver-hybrid.yaml"


def _with_config(command: tuple[str, ...], change: dict) -> tuple[str, ...]:
    words = list(command)
    i = words.index("--speculative-config") + 1
    words[i] = json.dumps({**json.loads(words[i]), **change}, separators=(",", ":"))
    return tuple(words)


@pytest.mark.parametrize(
    ("change", "moved_fields"),
    [
        pytest.param(
            {"max_ngram_size": 1, "min_ngram_size": 1}, {"rejected_tokens"}, id="ngram-sizes-1..1"
        ),
        pytest.param(
            {"num_speculative_tokens": 4, "max_ngram_size": 2},
            {"accepted_tokens_per_head"},
            id="K=4",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_changed_server_fails_the_hybrid_baseline(
    tmp_path: Path, change: dict, moved_fields: set[str]
) -> None:
    scenario = load_scenario(HYBRID)
    baseline = load_baseline(scenario.baseline)
    assert baseline.scenario_hash == scenario.hash, "committed baseline is stale"
    changed = replace(scenario.server, command=_with_config(scenario.server.command, change))
    subset = replace(
        scenario, requests=tuple(r for r in scenario.requests if r.id.endswith("/nonstream"))
    )
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
    )
    report = render_text([result])
    print(report)  # the readable report, shown with -s and kept in the test log
    assert result.status == "failed", report
    failing = {r.field for r in rows if not r.ok}
    assert moved_fields <= failing, report
    assert "[FAILED] refserver-hybrid" in report
    failing_line = next(
        line
        for line in report.splitlines()
        if " FAIL" in line and any(f in line for f in moved_fields)
    )
    assert "exact" in failing_line or "abs" in failing_line  # the tolerance column is shown
