"""What a loaded scenario is: the dataclasses the runner, the server pool and the reports read.

Every default of a scenario key is written here once; the loader (e2e.scenario.loading) uses these
names, so a YAML file that leaves a key out gets the same value as a dataclass built in code.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.scenario import placeholders

KINDS = ("metrics", "lossless")
ENDPOINTS = ("chat", "completion", "generate")
DEFAULT_KIND = "metrics"
DEFAULT_ADAPTER = "fastdeploy"
DEFAULT_ENDPOINT = "chat"
DEFAULT_CONCURRENCY = 1
DEFAULT_REQUEST_TIMEOUT = 120.0
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_STARTUP_TIMEOUT = 300.0
DEFAULT_NEAR_TIE_GAP = 1e-3


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file, the key and the problem."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference for one field: passes if |measured - baseline| <= max(abs, rel*|baseline|).

    A field without a Tolerance is compared exactly (integer counts, and floats that the tool itself
    wrote, which round-trip through YAML exactly).
    """

    abs: float | None = None
    rel: float | None = None

    def allows(self, baseline: float, measured: float) -> bool:
        diff = abs(measured - baseline)
        limit = max(self.abs or 0.0, (self.rel or 0.0) * abs(baseline))
        # The bound is inclusive; the slack absorbs binary rounding (0.51 - 0.49 > 0.02 in floats).
        return diff <= limit * (1 + 1e-9) + 1e-12

    def describe(self) -> str:
        parts = []
        if self.abs is not None:
            parts.append(f"abs {self.abs:g}")
        if self.rel is not None:
            parts.append(f"rel {self.rel:g}")
        return " or ".join(parts)


@dataclass(frozen=True)
class ServerSpec:
    """How to reach one server: a launch command (with placeholders) or the URL of a running one.

    Placeholders in command, env and metrics_url: {port} (a free port, the HTTP port),
    {port:NAME} (another free port, e.g. for FastDeploy's engine queue), {python} (this
    interpreter), {env:NAME} (an environment variable; the scenario skips when it is unset).
    """

    command: tuple[str, ...] | None = None
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = DEFAULT_HEALTH_PATH
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    metrics_url: str | None = None
    requires_modules: tuple[str, ...] = ()
    requires_cuda: bool = False  # the command needs a CUDA device (torch must see one here)
    cwd: str | None = None  # working directory of the command (absolute once loaded)
    # sha256 of files the server's behaviour depends on (e.g. draft-head weights), by the path
    # written in the scenario: part of the scenario hash, so new weights make the baseline stale.
    fingerprint: dict[str, str] = field(default_factory=dict)
    # What a person runs to make the command available; quoted in the skip reason.
    setup: str | None = None

    def key(self) -> str:
        """Identity used to share one launched server between scenarios with the same config."""
        return json.dumps(
            {
                "command": self.command,
                "url": self.url,
                "env": self.env,
                "health_path": self.health_path,
                "metrics_url": self.metrics_url,
                "cwd": self.cwd,
            },
            sort_keys=True,
        )

    def hash_payload(self) -> dict[str, Any]:
        """The command and env with {env:NAME} filled in (a model switch through the environment
        makes the baseline stale); ports and {python} stay placeholders, as they change per run
        and per machine without changing what is measured."""
        command = tuple(placeholders.expand_env(w) for w in self.command) if self.command else None
        env = {k: placeholders.expand_env(v) for k, v in self.env.items()}
        payload: dict[str, Any] = {"command": command, "env": env}
        if self.fingerprint:
            payload["fingerprint"] = self.fingerprint
        return payload

    def skip_reason(self) -> str | None:
        """Why this server cannot be launched here (command or module not installed), or None."""
        if self.command is None:
            return None
        program = self.command[0]
        if (
            not placeholders.is_placeholder(program)
            and placeholders.find_program(program, self.cwd) is None
        ):
            where = (
                "not found on PATH" if "/" not in program else f"no such file in {self.cwd or '.'}"
            )
            hint = f"; set it up with `{self.setup}`" if self.setup else ""
            return f"command {program!r} is not installed ({where}){hint}"
        for module in self.requires_modules:
            if importlib.util.find_spec(module) is None:
                return f"Python module {module!r} is not installed"
        if self.requires_cuda and not _cuda_available():
            return "it needs a CUDA device (requires_cuda) and torch sees none here"
        unset = placeholders.missing_env(self._placeholder_texts())
        if unset is not None:
            return f"environment variable {unset} is not set"
        return None

    def port_names(self) -> list[str]:
        """Names of the {port:NAME} placeholders, '' standing for {port}."""
        return placeholders.port_names(self._placeholder_texts())

    def _placeholder_texts(self) -> list[str]:
        return [*(self.command or ()), *self.env.values(), self.metrics_url or ""]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@dataclass(frozen=True)
class RequestSpec:
    """One HTTP request: the endpoint and the exact JSON body sent."""

    id: str
    endpoint: str
    body: dict[str, Any]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream", False))


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    kind: str
    servers: dict[str, ServerSpec]
    adapter: str
    requests: tuple[RequestSpec, ...]
    concurrency: int
    request_timeout: float
    invariants: tuple[str, ...] | None
    tolerances: dict[str, Tolerance]
    baseline: Path | None
    speculative_tokens: int | None
    near_tie_max_gap: float
    tags: tuple[str, ...]
    hash: str

    @property
    def server(self) -> ServerSpec:
        """The server of a metrics scenario (lossless scenarios have 'reference' and 'candidate')."""
        return self.servers["server"]

    def skip_reason(self) -> str | None:
        for role, spec in self.servers.items():
            reason = spec.skip_reason()
            if reason:
                who = "the server" if role == "server" else f"the {role} server"
                return f"{self.name}: {who} cannot run here: {reason}"
        return None
