"""Scenario files: what to launch, what to send, which invariants and tolerances apply.

One module per idea: `schema` (the dataclasses and every default, written once), `loading` (YAML
to those dataclasses, with the error messages; the scenario hash; finding scenario files),
`reader` (typed access to YAML mappings), `requests` (request bodies from defaults, matrix and
prompt files), `placeholders` ({port}, {python}, {env:NAME}, {refserver}). The names below are the
public interface; import them from `e2e.scenario`.
"""

from e2e.scenario.loading import discover_scenarios, load_scenario, resolve_scenarios
from e2e.scenario.placeholders import REFSERVER_PLACEHOLDER, expand_env, substitute
from e2e.scenario.reader import scenario_relative
from e2e.scenario.schema import (
    DEFAULT_NEAR_TIE_GAP,
    ENDPOINTS,
    KINDS,
    RequestSpec,
    Scenario,
    ScenarioError,
    ServerSpec,
    Tolerance,
)

__all__ = [
    "DEFAULT_NEAR_TIE_GAP",
    "ENDPOINTS",
    "KINDS",
    "REFSERVER_PLACEHOLDER",
    "RequestSpec",
    "Scenario",
    "ScenarioError",
    "ServerSpec",
    "Tolerance",
    "discover_scenarios",
    "expand_env",
    "load_scenario",
    "resolve_scenarios",
    "scenario_relative",
    "substitute",
]
