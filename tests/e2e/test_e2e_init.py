"""`specgate init`: every engine's starter scenario loads (paths relative to the scenario file),
the CI job names the scenario, and nothing existing is overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from e2e.scenario import load_scenario
from specgate.cli import main
from specgate.scaffold import ENGINES


@pytest.mark.parametrize("engine", ENGINES)
def test_init_writes_a_loadable_scenario_and_ci_job(tmp_path: Path, engine: str, capsys) -> None:
    repo = tmp_path / "repo"
    assert main(["init", "--engine", engine, str(repo)]) == 0
    out = capsys.readouterr().out
    scenario = load_scenario(repo / "scenarios" / f"{engine}.yaml")
    assert scenario.baseline.parent == (repo / "baselines").resolve()
    assert (repo / "baselines").is_dir() and not any((repo / "baselines").iterdir())
    assert scenario.requests, "a starter scenario has requests"
    job = yaml.safe_load((repo / "ci" / "specgate.yml").read_text())
    steps = " ".join(str(step.get("run", "")) for step in job["jobs"]["specgate"]["steps"])
    assert f"--scenario scenarios/{engine}.yaml" in steps and "specgate kernel" in steps
    assert f"specgate baseline update scenarios/{engine}.yaml" in out


def test_init_refserver_uses_the_installed_package_assets(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path)]) == 0
    scenario = load_scenario(tmp_path / "scenarios" / "refserver.yaml")
    lighthouse = next(r for r in scenario.requests if r.id.startswith("rewrite-lighthouse"))
    assert "lighthouse" in str(lighthouse.body["messages"])  # from {refserver}/assets/prompts
    assert scenario.server.command[:3] == ("{python}", "-m", "refserver")


def test_init_never_overwrites(tmp_path: Path, capsys) -> None:
    assert main(["init", str(tmp_path)]) == 0
    (tmp_path / "scenarios" / "refserver.yaml").write_text("mine")
    assert main(["init", str(tmp_path)]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert (tmp_path / "scenarios" / "refserver.yaml").read_text() == "mine"
