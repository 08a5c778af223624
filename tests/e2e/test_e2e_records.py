"""The common acceptance record across engines, on the committed baselines of real runs.

refserver-ngram (FastDeploy's speculate_metrics) and refserver-ngram-xengine (vLLM's counter
names, same engine, same config) measured the same greedy request `rewrite-lighthouse`, so the
FastDeploy conversion must give exactly the accepted and per-position counts the counters gave,
and drafts no lower than theirs. vllm-cpu-ngram and refserver-ngram-xengine send the same
requests, so `specgate compare` lines the two engines up request by request.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import REPO

from e2e.acceptance import column_from_baseline, render_markdown, render_text
from e2e.baseline import BaselineError
from e2e.scenario import load_scenario
from specgate.cli import main

SCENARIOS = REPO / "scenarios"


def scenario(name: str):
    return load_scenario(SCENARIOS / f"{name}.yaml")


def test_fastdeploy_conversion_matches_the_same_engines_counters() -> None:
    fd = column_from_baseline(scenario("refserver-ngram")).records["rewrite-lighthouse"]
    counters = column_from_baseline(scenario("refserver-ngram-xengine")).records[
        "rewrite-lighthouse"
    ]
    assert fd.num_accepted_tokens == counters.num_accepted_tokens
    assert fd.accepted_per_position == counters.accepted_per_position
    assert fd.upper_bounds == {"num_drafts", "num_draft_tokens"}
    assert fd.num_drafts >= counters.num_drafts
    assert fd.num_draft_tokens >= counters.num_draft_tokens


def test_the_cross_engine_scenarios_send_the_same_requests() -> None:
    vllm, ref = scenario("vllm-cpu-ngram"), scenario("refserver-ngram-xengine")
    assert [(r.id, r.endpoint, r.body) for r in vllm.requests] == [
        (r.id, r.endpoint, r.body) for r in ref.requests
    ]
    assert {r.endpoint for r in vllm.requests} == {"chat", "completion"}
    assert {r.stream for r in vllm.requests} == {True, False}


def test_table_lines_engines_up_by_request_with_bounds_marked() -> None:
    columns = [
        column_from_baseline(scenario(n))
        for n in ("refserver-ngram-xengine", "vllm-cpu-ngram", "refserver-ngram")
    ]
    text = render_text(columns)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["request", "scenario"]
    first = next(i for i, line in enumerate(lines) if line.startswith("rewrite-lighthouse "))
    assert "refserver-ngram-xengine (vllm)" in lines[first]
    assert "vllm-cpu-ngram (vllm)" in lines[first + 1]
    assert "refserver-ngram (fastdeploy)" in lines[first + 2] and "≤" in lines[first + 2]
    assert sum(line.startswith("(all requests)") for line in lines) == 1
    markdown = render_markdown(columns)
    assert markdown.count("\n") == len(lines)  # header, rule, one line per row


def test_compare_command_prints_the_table_and_writes_markdown(tmp_path: Path, capsys) -> None:
    out = tmp_path / "table.md"
    code = main(["compare", "refserver-ngram-xengine", "vllm-cpu-ngram", "--markdown", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "vllm-cpu-ngram (vllm)" in printed and "mean acc. length" in printed
    assert out.read_text().startswith("| request |")


def test_compare_without_a_baseline_is_an_error_naming_the_file(tmp_path: Path, capsys) -> None:
    text = (SCENARIOS / "refserver-ngram.yaml").read_text()
    path = tmp_path / "nobase.yaml"
    prompts = REPO / "refserver" / "assets" / "prompts" / "heldout.jsonl"
    path.write_text(
        text.replace("../baselines/refserver-ngram.yaml", "missing.yaml")
        .replace("cwd: ..", "")
        .replace("../refserver/assets/prompts/heldout.jsonl", str(prompts))
    )
    with pytest.raises(BaselineError):
        column_from_baseline(load_scenario(path))
    assert main(["compare", str(path)]) == 1
    assert "missing.yaml" in capsys.readouterr().err


def test_vllm_cpu_scenario_skips_loudly_until_set_up(tmp_path: Path) -> None:
    """The same file run from a checkout without .venv-vllm: the reason names the missing file
    and the command that sets it up."""
    text = (SCENARIOS / "vllm-cpu-ngram.yaml").read_text()
    prompts = REPO / "refserver" / "assets" / "prompts" / "heldout.jsonl"
    (tmp_path / "scenarios").mkdir()
    path = tmp_path / "scenarios" / "vllm-cpu-ngram.yaml"
    path.write_text(text.replace("../refserver/assets/prompts/heldout.jsonl", str(prompts)))
    assert load_scenario(path).skip_reason() == (
        "vllm-cpu-ngram: the server cannot run here: command '.venv-vllm/bin/python' is not "
        f"installed (no such file in {tmp_path}); set it up with `make vllm-cpu`"
    )
