"""Loading a scenario file: YAML to the dataclasses of e2e.scenario.schema, every key validated.

A scenario is YAML written by people (schema in README, "Scenario files"). Loading validates every
key, request body keys included (e2e.request_fields), and the prompt files it reads, and fails
with an error that names the file, the key and what was expected, so a typo never turns into a
silently different test. Files are read with the one loader of e2e.yaml_loader.

The scenario hash covers everything that changes what is measured (server command and env,
adapter, requests, concurrency) and nothing that only changes how it is judged (tolerances,
invariants, description), so editing a tolerance keeps the baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from e2e.scenario.reader import Reader, scenario_relative
from e2e.scenario.requests import read_requests
from e2e.scenario.schema import (
    DEFAULT_ADAPTER,
    DEFAULT_CONCURRENCY,
    DEFAULT_HEALTH_PATH,
    DEFAULT_KIND,
    DEFAULT_NEAR_TIE_GAP,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_STARTUP_TIMEOUT,
    KINDS,
    RequestSpec,
    Scenario,
    ScenarioError,
    ServerSpec,
    Tolerance,
)
from e2e.yaml_loader import YAMLFileError, load_yaml


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate one scenario file."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file: {exc}") from exc
    except YAMLFileError as exc:
        raise ScenarioError(str(exc)) from None
    top = Reader(path, data)
    top.check_keys(
        [
            "name",
            "description",
            "kind",
            "server",
            "servers",
            "adapter",
            "request_defaults",
            "matrix",
            "requests",
            "concurrency",
            "request_timeout",
            "invariants",
            "tolerances",
            "baseline",
            "speculative_tokens",
            "near_tie",
            "tags",
        ]
    )
    name = top.get("name", str, path.stem)
    kind = top.get("kind", str, DEFAULT_KIND)
    if kind not in KINDS:
        raise top.error("kind", f"one of {list(KINDS)}", kind)
    from e2e.adapters import ADAPTERS

    adapter = top.get("adapter", str, DEFAULT_ADAPTER)
    if adapter not in ADAPTERS:
        raise top.error("adapter", f"one of {list(ADAPTERS)}", adapter)

    if kind == "metrics":
        if "servers" in top.mapping():
            raise top.error(
                "servers", "no 'servers' key in a metrics scenario (use 'server')", show_got=False
            )
        servers = {"server": _read_server(top.child("server", top.get("server", dict)))}
    else:
        if "server" in top.mapping():
            raise top.error(
                "server",
                "no 'server' key in a lossless scenario (use 'servers' with "
                "'reference' and 'candidate')",
                show_got=False,
            )
        pair = top.child("servers", top.get("servers", dict))
        pair.check_keys(["reference", "candidate"])
        servers = {
            role: _read_server(pair.child(role, pair.get(role, dict)))
            for role in ("reference", "candidate")
        }

    requests = read_requests(top, path, adapter)
    concurrency = top.positive_int("concurrency", DEFAULT_CONCURRENCY)
    if ADAPTERS[adapter].sequential and concurrency != 1:
        raise top.error(
            "concurrency",
            f"1 with the {adapter} adapter (its per-request values are "
            "server-wide counter deltas around a request sent alone)",
            concurrency,
        )
    request_timeout = float(top.positive_number("request_timeout", DEFAULT_REQUEST_TIMEOUT))

    invariants = top.get("invariants", list, None)
    if invariants is not None:
        from e2e.invariants import invariant_names

        known = invariant_names(adapter)
        for i, item in enumerate(invariants):
            if item not in known:
                raise top.error(
                    f"invariants[{i}]",
                    f"an invariant of the {adapter} adapter {sorted(known)}",
                    item,
                )
        invariants = tuple(invariants)

    tolerances = _read_tolerances(top.child("tolerances", top.get("tolerances", dict, {})))

    baseline = top.get("baseline", str, None)
    if kind == "metrics" and baseline is None:
        raise top.error(
            "baseline", "a path to the baseline file, relative to the scenario file", show_got=False
        )
    if kind == "lossless" and baseline is not None:
        raise top.error(
            "baseline", "no baseline in a lossless scenario (it compares two servers)", baseline
        )
    baseline_path = scenario_relative(path, baseline) if baseline else None

    speculative_tokens = top.positive_int("speculative_tokens", None)
    if speculative_tokens is None and kind == "metrics":
        speculative_tokens = _speculative_tokens_from_command(servers["server"].command)

    near_tie = top.child("near_tie", top.get("near_tie", dict, {}))
    near_tie.check_keys(["max_logprob_gap"])
    gap = float(
        near_tie.get("max_logprob_gap", (int, float), DEFAULT_NEAR_TIE_GAP, "a number >= 0")
    )
    if gap < 0:
        raise near_tie.error("max_logprob_gap", "a number >= 0", gap)

    tags = top.get("tags", list, [])
    for i, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise top.error(f"tags[{i}]", "a string", tag)

    scenario_hash = _scenario_hash(
        kind, servers, adapter, requests, concurrency, speculative_tokens
    )
    return Scenario(
        path=path.resolve(),
        name=name,
        description=top.get("description", str, ""),
        kind=kind,
        servers=servers,
        adapter=adapter,
        requests=tuple(requests),
        concurrency=concurrency,
        request_timeout=request_timeout,
        invariants=invariants,
        tolerances=tolerances,
        baseline=baseline_path,
        speculative_tokens=speculative_tokens,
        near_tie_max_gap=gap,
        tags=tuple(tags),
        hash=scenario_hash,
    )


def _read_server(reader: Reader) -> ServerSpec:
    reader.check_keys(
        [
            "command",
            "url",
            "env",
            "health_path",
            "startup_timeout",
            "metrics_url",
            "requires_modules",
            "requires_cuda",
            "cwd",
            "fingerprint",
            "setup",
        ]
    )
    data = reader.mapping()
    if ("command" in data) == ("url" in data):
        raise reader.error(
            "",
            "exactly one of 'command' (a launch command with {port}) or 'url' (a running server)",
            sorted(data),
        )
    command = None
    if "command" in data:
        raw = reader.get("command", list, expected="a list of strings (one per argument)")
        if not raw or not all(
            isinstance(word, (str, int, float)) and not isinstance(word, bool) for word in raw
        ):
            raise reader.error("command", "a non-empty list of strings (one per argument)", raw)
        command = tuple(str(word) for word in raw)
        if not any("{port}" in word for word in command):
            raise reader.error(
                "command", "a command that contains the {port} placeholder", list(command)
            )
    url = reader.get("url", str, None)
    env = reader.get("env", dict, {})
    for key, value in env.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise reader.child("env", env).error(str(key), "a string value", value)
    health_path = reader.get("health_path", str, DEFAULT_HEALTH_PATH)
    if not health_path.startswith("/"):
        raise reader.error("health_path", "a path starting with '/'", health_path)
    fingerprint = {}
    for i, name in enumerate(reader.get("fingerprint", list, [])):
        target = scenario_relative(reader.path, str(name))
        if not target.is_file():
            raise reader.error(f"fingerprint[{i}]", "a file, relative to the scenario file", name)
        fingerprint[str(name)] = hashlib.sha256(target.read_bytes()).hexdigest()
    modules = reader.get("requires_modules", list, [])
    cwd = reader.get("cwd", str, None)
    if cwd is not None:
        cwd_path = scenario_relative(reader.path, cwd)
        if not cwd_path.is_dir():
            raise reader.error("cwd", "a folder, relative to the scenario file", cwd)
        cwd = str(cwd_path)
    return ServerSpec(
        command=command,
        url=url.rstrip("/") if url else None,
        env={str(k): str(v) for k, v in env.items()},
        health_path=health_path,
        startup_timeout=float(reader.positive_number("startup_timeout", DEFAULT_STARTUP_TIMEOUT)),
        metrics_url=reader.get("metrics_url", str, None),
        requires_modules=tuple(str(m) for m in modules),
        requires_cuda=reader.get("requires_cuda", bool, False),
        cwd=cwd,
        fingerprint=fingerprint,
        setup=reader.get("setup", str, None),
    )


def _read_tolerances(reader: Reader) -> dict[str, Tolerance]:
    tolerances = {}
    for field_name, spec in reader.mapping().items():
        entry = reader.child(str(field_name), spec)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"abs": spec}
            entry = reader.child(str(field_name), spec)
        entry.mapping()
        entry.check_keys(["abs", "rel"])
        if not spec:
            raise entry.error("", "at least one of 'abs' or 'rel'", spec)
        values = {}
        for key in ("abs", "rel"):
            value = entry.get(key, (int, float), None, "a number >= 0")
            if value is not None and value < 0:
                raise entry.error(key, "a number >= 0", value)
            values[key] = None if value is None else float(value)
        tolerances[str(field_name)] = Tolerance(**values)
    return tolerances


def _speculative_tokens_from_command(command: tuple[str, ...] | None) -> int | None:
    """K from a FastDeploy/vLLM/refserver style `--speculative-config JSON` argument, if any."""
    if not command:
        return None
    for i, word in enumerate(command):
        value = None
        if word == "--speculative-config" and i + 1 < len(command):
            value = command[i + 1]
        elif word.startswith("--speculative-config="):
            value = word.split("=", 1)[1]
        if value is not None:
            try:
                config = json.loads(value)
            except json.JSONDecodeError:
                return None
            k = config.get("num_speculative_tokens")
            method = config.get("method")
            if method in (None, "none"):
                return None
            return k if isinstance(k, int) else None
    return None


def _scenario_hash(
    kind: str,
    servers: dict[str, ServerSpec],
    adapter: str,
    requests: list[RequestSpec],
    concurrency: int,
    k: int | None,
) -> str:
    payload = {
        "kind": kind,
        "servers": {role: spec.hash_payload() for role, spec in servers.items()},
        "adapter": adapter,
        "requests": [{"id": r.id, "endpoint": r.endpoint, "body": r.body} for r in requests],
        "concurrency": concurrency,
        "speculative_tokens": k,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"sha256:{digest}"


def discover_scenarios(folder: Path) -> list[Path]:
    """Every *.yaml / *.yml below `folder`, sorted, so runs are reproducible."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def resolve_scenarios(selectors: list[str], folder: Path) -> list[Path]:
    """Paths for `--scenario` values: a path to a file, or a scenario name / file stem in `folder`."""
    if not selectors:
        return discover_scenarios(folder)
    found = discover_scenarios(folder)
    out: list[Path] = []
    for selector in selectors:
        candidate = Path(selector)
        if candidate.is_file():
            out.append(candidate)
            continue
        matches = [p for p in found if p.stem == selector or _declared_name(p) == selector]
        if not matches:
            names = sorted({p.stem for p in found})
            raise ScenarioError(
                f"--scenario {selector!r}: no such file and no scenario of that name "
                f"in {folder} (known: {names})"
            )
        out.extend(m for m in matches if m not in out)
    return out


def _declared_name(path: Path) -> str | None:
    try:
        data = load_yaml(path)
    except (OSError, YAMLFileError):
        return None
    return data.get("name") if isinstance(data, dict) else None
