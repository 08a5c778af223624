"""The one server schedule of a gate run, used by `specgate run` and by the pytest plugin.

Scenarios that share a server configuration run back to back, and each server is stopped as soon
as no scenario left in the run needs it, so at most one refserver holds memory at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from e2e.runner import Measured, ScenarioResult, measure_metrics, run_scenario
from e2e.scenario import Scenario
from e2e.server import ServerPool


def server_keys(scenario: Scenario) -> list[str]:
    return [spec.key() for spec in scenario.servers.values()]


def order(scenarios: Iterable[Scenario]) -> list[Scenario]:
    """Stable: scenarios grouped by their server configurations."""
    return sorted(scenarios, key=server_keys)


class Schedule:
    """Runs scenarios on a ServerPool and releases each server after its last scenario."""

    def __init__(self, pool: ServerPool):
        self.pool = pool
        self.remaining: Counter[str] = Counter()

    def plan(self, scenarios: Iterable[Scenario]) -> None:
        """Add scenarios still to run (each call adds to the plan)."""
        for scenario in scenarios:
            self.remaining.update(server_keys(scenario))

    def done(self, scenario: Scenario) -> None:
        """Mark `scenario` finished; stop its servers if nothing planned needs them."""
        for spec in scenario.servers.values():
            self.remaining[spec.key()] -= 1
            if self.remaining[spec.key()] <= 0:
                self.pool.release(spec)

    def run(self, scenario: Scenario) -> ScenarioResult:
        try:
            return run_scenario(scenario, self.pool)
        finally:
            self.done(scenario)

    def measure(self, scenario: Scenario, *, provenance: bool = False) -> Measured:
        """Measure a metrics scenario without judging it (`baseline update`, `compare --measure`)."""
        try:
            return measure_metrics(scenario, self.pool, provenance=provenance)
        finally:
            self.done(scenario)
