"""pytest integration of the e2e gate (used by the plugin specgate.pytest_plugin).

- Scenarios are discovered from <rootdir>/scenarios; `--scenario` selects some (name or path).
- `--server-url` reuses a running server for every scenario.
- One server per distinct server configuration per pytest run, on the schedule of `specgate
  run` (e2e.schedule): tests are ordered so that scenarios sharing a configuration run back to
  back, and a server is stopped as soon as no test left in this process needs it. Under pytest-xdist each worker owns its servers, and ports are
  reserved across workers (e2e.ports), so parallel workers never collide.
- `--report FILE` writes the markdown report at the end (per worker under xdist: FILE.gwN.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from e2e.report import render_markdown
from e2e.runner import ScenarioResult
from e2e.scenario import Scenario, ScenarioError, load_scenario, resolve_scenarios
from e2e.schedule import Schedule, server_keys
from e2e.server import ServerPool

SCENARIO_PARAM = "scenario_path"


def scenario_paths(config: pytest.Config) -> list[Path]:
    folder = Path(config.rootpath) / "scenarios"
    try:
        return resolve_scenarios(config.getoption("--scenario"), folder)
    except ScenarioError as exc:
        raise pytest.UsageError(str(exc)) from exc


def _server_keys(path: Path) -> list[str]:
    try:
        return server_keys(load_scenario(path))
    except ScenarioError:
        return []


class E2ESession:
    """State of the e2e gate for one pytest process."""

    def __init__(self, config: pytest.Config, log_dir: Path):
        self.config = config
        self.pool = ServerPool(log_dir, config.getoption("--server-url"))
        self.schedule = Schedule(self.pool)
        self.results: list[ScenarioResult] = []

    def plan(self, items: list[pytest.Item]) -> None:
        for item in items:
            path = _param(item)
            if path is not None:
                with contextlib.suppress(ScenarioError):  # the test reports a malformed file
                    self.schedule.plan([load_scenario(path)])

    def run(self, scenario: Scenario) -> ScenarioResult:
        result = self.schedule.run(scenario)
        self.results.append(result)
        return result

    def finish(self) -> None:
        self.pool.close()
        target = self.config.getoption("--report")
        if target and self.results:
            worker = getattr(self.config, "workerinput", {}).get("workerid")
            path = Path(target)
            if worker:
                path = path.with_suffix(f".{worker}{path.suffix or '.md'}")
            path.write_text(render_markdown(self.results), encoding="utf-8")


def _param(item: pytest.Item) -> Path | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get(SCENARIO_PARAM) if callspec else None
    return value if isinstance(value, Path) else None  # an empty parameter set gives NOTSET


def generate_tests(metafunc: pytest.Metafunc) -> None:
    if SCENARIO_PARAM in metafunc.fixturenames:
        paths = scenario_paths(metafunc.config)
        metafunc.parametrize(SCENARIO_PARAM, paths, ids=[p.stem for p in paths])


def order_items(items: list[pytest.Item]) -> None:
    """Stable sort: scenario tests grouped by server configuration, other tests untouched."""
    positions = [i for i, item in enumerate(items) if _param(item) is not None]
    scenario_items = [items[i] for i in positions]
    scenario_items.sort(key=lambda item: _server_keys(_param(item)))
    for i, item in zip(positions, scenario_items, strict=True):
        items[i] = item
