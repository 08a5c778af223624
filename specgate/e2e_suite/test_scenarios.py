"""The gate: every scenario in scenarios/ (or those chosen with --scenario) against its baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.report import render_text
from e2e.scenario import ScenarioError, load_scenario

pytestmark = pytest.mark.e2e


def test_scenario(scenario_path: Path, e2e_session) -> None:
    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:  # a malformed file: its message, not a traceback
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    result = e2e_session.run(scenario)
    if result.status == "skipped":
        pytest.skip("; ".join(result.messages))
    if not result.passed:
        pytest.fail(render_text([result]), pytrace=False)
