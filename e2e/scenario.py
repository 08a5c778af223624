"""Scenario files: what to launch, what to send, which invariants and tolerances apply.

A scenario is YAML written by people (schema in README, "Scenario files"). Loading validates every
key, request body keys included (e2e.request_fields), and the prompt files it reads, and fails
with an error that names the file, the key and what was expected, so a typo never turns into a
silently different test. Files are read with the one loader of e2e.yaml_loader.

The scenario hash covers everything that changes what is measured (server command and env,
adapter, requests, concurrency) and nothing that only changes how it is judged (tolerances,
invariants, description), so editing a tolerance keeps the baseline.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import request_fields
from e2e.yaml_loader import YAMLFileError, load_yaml

KINDS = ("metrics", "lossless")
ENDPOINTS = ("chat", "completion", "generate")
# Request keys the harness interprets itself; the others make the JSON body (e2e.request_fields).
_REQUEST_META_KEYS = {"id", "endpoint", "messages_from", "repeat"}
_PLACEHOLDER = re.compile(
    r"\{(port(?::[A-Za-z_][A-Za-z0-9_]*)?|python|env:[A-Za-z_][A-Za-z0-9_]*)\}"
)
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
    health_path: str = "/health"
    startup_timeout: float = 300.0
    metrics_url: str | None = None
    requires_modules: tuple[str, ...] = ()
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
        command = tuple(expand_env(w) for w in self.command) if self.command else None
        env = {k: expand_env(v) for k, v in self.env.items()}
        payload: dict[str, Any] = {"command": command, "env": env}
        if self.fingerprint:
            payload["fingerprint"] = self.fingerprint
        return payload

    def skip_reason(self) -> str | None:
        """Why this server cannot be launched here (command or module not installed), or None."""
        if self.command is None:
            return None
        program = self.command[0]
        if not _PLACEHOLDER.fullmatch(program) and _find_program(program, self.cwd) is None:
            where = (
                "not found on PATH" if "/" not in program else f"no such file in {self.cwd or '.'}"
            )
            hint = f"; set it up with `{self.setup}`" if self.setup else ""
            return f"command {program!r} is not installed ({where}){hint}"
        for module in self.requires_modules:
            if importlib.util.find_spec(module) is None:
                return f"Python module {module!r} is not installed"
        texts = [*self.command, *self.env.values(), self.metrics_url or ""]
        for text in texts:
            for match in _PLACEHOLDER.finditer(text):
                name = match.group(1)
                if name.startswith("env:") and name[4:] not in os.environ:
                    return f"environment variable {name[4:]} is not set"
        return None

    def port_names(self) -> list[str]:
        """Names of the {port:NAME} placeholders, '' standing for {port}."""
        names: list[str] = []
        for text in [*(self.command or ()), *self.env.values(), self.metrics_url or ""]:
            for match in _PLACEHOLDER.finditer(text):
                token = match.group(1)
                if token.startswith("port"):
                    name = token[5:] if ":" in token else ""
                    if name not in names:
                        names.append(name)
        return names


def _find_program(program: str, cwd: str | None) -> str | None:
    """Where `program` runs from: a relative path with a '/' is taken from the server's cwd,
    as Popen does; a bare name is looked up on PATH."""
    if "/" in program and cwd and not os.path.isabs(program):
        return shutil.which(os.path.join(cwd, program))
    return shutil.which(program)


def expand_env(text: str) -> str:
    """Fill {env:NAME} placeholders whose variable is set; leave every other placeholder."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("env:") and token[4:] in os.environ:
            return os.environ[token[4:]]
        return match.group(0)

    return _PLACEHOLDER.sub(replace, text)


def substitute(text: str, ports: dict[str, int], python: str) -> str:
    """Fill the placeholders of one command word, env value or URL."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token == "python":
            return python
        if token.startswith("env:"):
            return os.environ[token[4:]]
        name = token[5:] if ":" in token else ""
        return str(ports[name])

    return _PLACEHOLDER.sub(replace, text)


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


class _Reader:
    """Typed access to a YAML mapping that reports errors as 'FILE: key 'a.b[2].c': expected ...'."""

    def __init__(self, path: Path, data: Any, where: str = ""):
        self.path = path
        self.data = data
        self.where = where

    def error(
        self, key: str, expected: str, got: Any = None, *, show_got: bool = True
    ) -> ScenarioError:
        full = f"{self.where}.{key}" if self.where and key else (key or self.where or "<top level>")
        message = f"{self.path}: key {full!r}: expected {expected}"
        if show_got:
            message += f", got {got!r}"
        return ScenarioError(message)

    def mapping(self) -> dict[str, Any]:
        if not isinstance(self.data, dict):
            raise self.error("", "a mapping", self.data)
        return self.data

    def check_keys(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in self.mapping():
            if key not in allowed:
                raise self.error(
                    str(key),
                    f"one of the known keys {sorted(allowed)}{_did_you_mean(str(key), allowed)}",
                    show_got=False,
                )

    def child(self, key: str, value: Any) -> _Reader:
        where = f"{self.where}.{key}" if self.where else key
        return _Reader(self.path, value, where)

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., expected: str = ""
    ) -> Any:
        data = self.mapping()
        if key not in data:
            if default is ...:
                raise self.error(
                    key, f"{expected or _type_name(kind)} (the key is required)", show_got=False
                )
            return default
        value = data[key]
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            raise self.error(key, expected or _type_name(kind), value)
        if not isinstance(value, kind):
            raise self.error(key, expected or _type_name(kind), value)
        return value

    def positive_number(self, key: str, default: Any = ...) -> float:
        value = self.get(key, (int, float), default, "a positive number")
        if value is not None and value <= 0:
            raise self.error(key, "a positive number", value)
        return value

    def positive_int(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default, "a positive integer")
        if value is not None and value <= 0:
            raise self.error(key, "a positive integer", value)
        return value


def _did_you_mean(key: str, allowed: Iterable[str]) -> str:
    match = request_fields.closest(key, allowed)
    return f" (did you mean {match!r}?)" if match else ""


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


REFSERVER_PLACEHOLDER = "{refserver}"


def scenario_relative(scenario_path: Path, name: str) -> Path:
    """A path written in a scenario (baseline, messages_from, fingerprint, cwd): relative to the
    scenario file, so a scenario works from any current directory. A leading ``{refserver}``
    stands for the installed refserver package folder (its assets ship in the wheel)."""
    if name.startswith(REFSERVER_PLACEHOLDER):
        spec = importlib.util.find_spec("refserver")
        if spec is None or not spec.submodule_search_locations:
            raise ScenarioError(f"{scenario_path}: {name!r}: refserver is not installed")
        base = Path(next(iter(spec.submodule_search_locations)))
        return (base / name[len(REFSERVER_PLACEHOLDER) :].lstrip("/")).resolve()
    return (scenario_path.parent / name).resolve()


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate one scenario file."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file: {exc}") from exc
    except YAMLFileError as exc:
        raise ScenarioError(str(exc)) from None
    top = _Reader(path, data)
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
    kind = top.get("kind", str, "metrics")
    if kind not in KINDS:
        raise top.error("kind", f"one of {list(KINDS)}", kind)
    from e2e.adapters import ADAPTERS

    adapter = top.get("adapter", str, "fastdeploy")
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

    requests = _read_requests(top, path, adapter)
    concurrency = top.positive_int("concurrency", 1)
    if ADAPTERS[adapter].sequential and concurrency != 1:
        raise top.error(
            "concurrency",
            f"1 with the {adapter} adapter (its per-request values are "
            "server-wide counter deltas around a request sent alone)",
            concurrency,
        )
    request_timeout = float(top.positive_number("request_timeout", 120.0))

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


def _read_server(reader: _Reader) -> ServerSpec:
    reader.check_keys(
        [
            "command",
            "url",
            "env",
            "health_path",
            "startup_timeout",
            "metrics_url",
            "requires_modules",
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
    health_path = reader.get("health_path", str, "/health")
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
        startup_timeout=float(reader.positive_number("startup_timeout", 300.0)),
        metrics_url=reader.get("metrics_url", str, None),
        requires_modules=tuple(str(m) for m in modules),
        cwd=cwd,
        fingerprint=fingerprint,
        setup=reader.get("setup", str, None),
    )


def _read_requests(top: _Reader, path: Path, adapter: str) -> list[RequestSpec]:
    defaults = top.child("request_defaults", top.get("request_defaults", dict, {}))
    matrix = _read_matrix(top)
    raw_requests = top.get("requests", list)
    if not raw_requests:
        raise top.error("requests", "a non-empty list of requests", raw_requests)
    requests: list[RequestSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_requests):
        reader = top.child(f"requests[{i}]", raw)
        # The harness's own keys (id, repeat, endpoint) may come from request_defaults too.
        merged = _Reader(path, {**defaults.mapping(), **reader.mapping()}, reader.where)
        base_id = merged.get("id", str, expected="a unique request id")
        repeat = merged.positive_int("repeat", 1)
        endpoint = merged.get("endpoint", str, "chat")
        if endpoint not in ENDPOINTS:
            raise merged.error("endpoint", f"one of {list(ENDPOINTS)}", endpoint)
        for layer in (defaults, reader):
            _check_fields(layer, endpoint, adapter)
        for overlay in itertools.chain(*matrix):
            _check_fields(overlay, endpoint, adapter, overlay=True)
        base = _merge_layer(copy.deepcopy(defaults.mapping()), copy.deepcopy(reader.mapping()))
        if "messages_from" in base:
            if "messages" in base:
                raise merged.error(
                    "messages_from",
                    "either 'messages' or 'messages_from', not both",
                    show_got=False,
                )
            base["messages"] = _messages_from(merged, path, base["messages_from"])
        for overlays in itertools.product(*matrix):
            body = {k: copy.deepcopy(v) for k, v in base.items() if k not in _REQUEST_META_KEYS}
            suffix: list[str] = []
            for overlay in overlays:
                label = overlay.mapping().get("name")
                layer = {k: copy.deepcopy(v) for k, v in overlay.mapping().items() if k != "name"}
                body = _merge_layer(body, layer)
                if label:
                    suffix.append(str(label))
            body = _flatten_extra_body(merged, body)
            _check_body(merged, endpoint, body)
            request_id = base_id + ("/" + "+".join(suffix) if suffix else "")
            for r in range(repeat):
                full_id = request_id + (f"#{r + 1}" if repeat > 1 else "")
                if full_id in seen:
                    raise merged.error("id", "a unique request id", full_id)
                seen.add(full_id)
                requests.append(RequestSpec(id=full_id, endpoint=endpoint, body=body))
    return requests


def _check_fields(layer: _Reader, endpoint: str, adapter: str, overlay: bool = False) -> None:
    """Every body key of one layer (request_defaults, a request, a matrix overlay) is a field of
    the endpoint (e2e.request_fields) or sits under `extra_body:`, a mapping."""
    allowed = request_fields.allowed_fields(endpoint, adapter)
    harness_keys = {"name"} if overlay else _REQUEST_META_KEYS
    for key, value in layer.mapping().items():
        if key in harness_keys:
            continue
        if key == request_fields.EXTRA_BODY:
            extra = layer.child(key, value).mapping()
            for name in extra:
                if not isinstance(name, str):
                    raise layer.child(key, value).error(str(name), "a string key", name)
            continue
        if key not in allowed:
            raise layer.error(
                str(key),
                f"{request_fields.describe(endpoint, adapter)}"
                f"{_did_you_mean(str(key), allowed)}; send other fields of your engine "
                f"under '{request_fields.EXTRA_BODY}:'",
                show_got=False,
            )


def _merge_layer(body: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `body`: its keys replace those of `body`, except `extra_body`, merged by key."""
    extra = {**body.get(request_fields.EXTRA_BODY, {}), **layer.get(request_fields.EXTRA_BODY, {})}
    out = {**body, **layer}
    if extra:
        out[request_fields.EXTRA_BODY] = extra
    return out


def _flatten_extra_body(reader: _Reader, body: dict[str, Any]) -> dict[str, Any]:
    """The body as sent: the `extra_body` keys join the top level (never replacing one)."""
    extra = body.pop(request_fields.EXTRA_BODY, {})
    for name in extra:
        if name in body:
            raise reader.child(request_fields.EXTRA_BODY, extra).error(
                name, "a key that is not also set at the top level of the request", extra[name]
            )
    return {**body, **extra}


def _read_matrix(top: _Reader) -> list[list[_Reader]]:
    """`matrix`: a list of axes, each a list of overlays (mappings merged into every request body).

    Every request is expanded over the cartesian product of the axes. An overlay's optional
    'name' is appended to the request id, e.g. 'lighthouse/stream+logprobs'.
    """
    axes = top.get("matrix", list, [])
    out: list[list[_Reader]] = []
    for a, axis in enumerate(axes):
        if not isinstance(axis, list) or not axis:
            raise top.error(f"matrix[{a}]", "a non-empty list of overlays (mappings)", axis)
        overlays = []
        for o, overlay in enumerate(axis):
            if not isinstance(overlay, dict):
                raise top.error(f"matrix[{a}][{o}]", "a mapping of request keys", overlay)
            bad = set(overlay) & (_REQUEST_META_KEYS - {"name"})
            if bad:
                raise top.error(
                    f"matrix[{a}][{o}]",
                    "body keys only (not id/endpoint/messages_from/repeat)",
                    sorted(bad),
                )
            overlays.append(top.child(f"matrix[{a}][{o}]", overlay))
        out.append(overlays)
    return out


def _messages_from(reader: _Reader, path: Path, ref: Any) -> list[dict[str, Any]]:
    """'FILE.jsonl#ID': the messages of the line with that id (FILE relative to the scenario).

    The whole prompt file is checked: one JSON object per line, each with a string 'id' and a
    'messages' list of {role, content} objects. Errors name the prompt file, the line and the key.
    """
    if not isinstance(ref, str) or "#" not in ref:
        raise reader.error(
            "messages_from", "'FILE.jsonl#ID' (FILE relative to the scenario file)", ref
        )
    file_part, prompt_id = ref.rsplit("#", 1)
    jsonl = scenario_relative(path, file_part)
    try:
        raw = jsonl.read_bytes()
    except OSError as exc:
        raise reader.error("messages_from", f"a readable JSONL file ({exc})", ref) from exc
    used_by = f"(the prompt file of {path} key '{reader.where}.messages_from')"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{jsonl}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
            f"expected JSON lines {used_by}"
        ) from None
    found = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{jsonl}: line {lineno}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = f" ({exc.msg} at column {exc.colno})" if hasattr(exc, "colno") else ""
            raise ScenarioError(
                f"{where}: not JSON{detail}; expected one JSON object per line {used_by}"
            ) from None
        if not isinstance(record, dict):
            raise ScenarioError(
                f"{where}: expected a JSON object with 'id' and 'messages', got "
                f"{_json_type(record)} {used_by}"
            )
        for key, ok, expected in (
            ("id", isinstance(record.get("id"), str), "a string"),
            ("messages", _is_message_list(record.get("messages")),
             "a non-empty list of {role, content} objects"),
        ):  # fmt: skip
            if not ok:
                got = f"got {record[key]!r}" if key in record else "the key is required"
                raise ScenarioError(f"{where}: key {key!r}: expected {expected}, {got} {used_by}")
        if record["id"] == prompt_id and found is None:
            found = record["messages"]
    if found is None:
        raise reader.error("messages_from", f"an id present in {jsonl}", prompt_id)
    return found


def _is_message_list(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    )


def _json_type(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_body(reader: _Reader, endpoint: str, body: dict[str, Any]) -> None:
    if endpoint == "chat":
        messages = body.get("messages")
        if not _is_message_list(messages):
            raise reader.error(
                "messages",
                "a non-empty list of {role, content} mappings (or messages_from)",
                messages,
            )
    elif endpoint == "completion":
        if not isinstance(body.get("prompt"), (str, list)):
            raise reader.error("prompt", "a string (completion endpoint)", body.get("prompt"))
    elif not isinstance(body.get("text"), str) and "input_ids" not in body:
        raise reader.error("text", "a string or input_ids (generate endpoint)", body.get("text"))
    for key in ("max_tokens", "top_logprobs"):
        if key in body and (
            not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < 0
        ):
            raise reader.error(key, "a non-negative integer", body[key])
    for key in ("stream", "logprobs"):
        if (
            key in body
            and not isinstance(body[key], bool)
            and not (key == "logprobs" and endpoint == "completion" and isinstance(body[key], int))
        ):
            raise reader.error(key, "true or false", body[key])


def _read_tolerances(reader: _Reader) -> dict[str, Tolerance]:
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
