"""Baseline files: measured values per request plus provenance, written only by the tool.

A baseline belongs to one scenario on one kind of machine (SPEC §3), so it records where and how
it was measured, and the scenario hash it was measured for. A baseline whose hash no longer matches
its scenario is stale and fails the gate with the command that refreshes it. Writes are atomic
(temporary file in the same folder, fsync, rename), so an interrupted update leaves the old file.
Loading (with the one loader of e2e.yaml_loader) checks the type of every value the comparison
reads, so a hand-edited or corrupt file fails before any request is sent, naming the key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.yaml_loader import YAMLFileError, load_yaml

FORMAT_VERSION = 1


class BaselineError(ValueError):
    """A baseline file that is missing, malformed or stale; the message says what to do."""


class BaselineFormatError(BaselineError):
    """A baseline file that exists but cannot be used as one (not YAML, a value of the wrong type):
    a usage error of the gate, reported before any request is sent."""


@dataclass
class Baseline:
    scenario: str
    scenario_hash: str
    provenance: dict[str, Any]
    # request id -> {"fields": {name: value}, "text": str}
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_yaml(self) -> str:
        data = {
            "specgate_baseline": FORMAT_VERSION,
            "scenario": self.scenario,
            "scenario_hash": self.scenario_hash,
            "provenance": self.provenance,
            "requests": self.requests,
        }
        header = (
            "# Written by `specgate baseline update`; do not edit by hand.\n"
            "# Refresh with: specgate baseline update <scenario>\n"
        )
        return header + yaml.dump(
            data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )


class _Dumper(yaml.SafeDumper):
    """safe_dump, with lists of numbers on one line so diffs of baselines stay readable, and
    never an alias (the loader refuses them), even where two values are the same object."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, (int, float)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def load_baseline(path: Path) -> Baseline:
    try:
        data = load_yaml(path)
    except FileNotFoundError as exc:
        raise BaselineError(
            f"{path}: no baseline yet; create it with `specgate baseline update <scenario>`"
        ) from exc
    except OSError as exc:
        raise BaselineFormatError(f"{path}: cannot read the baseline: {exc}") from exc
    except YAMLFileError as exc:
        raise BaselineFormatError(str(exc)) from None
    _check_format(path, data)
    return Baseline(data["scenario"], data["scenario_hash"], data["provenance"], data["requests"])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_format(path: Path, data: Any) -> None:
    """The types the gate relies on; every error names the file, the key and what was expected."""

    def error(key: str, expected: str, value: Any) -> BaselineFormatError:
        return BaselineFormatError(f"{path}: key {key!r}: expected {expected}, got {value!r}")

    if not isinstance(data, dict) or data.get("specgate_baseline") != FORMAT_VERSION:
        value = data.get("specgate_baseline") if isinstance(data, dict) else data
        raise error(
            "specgate_baseline",
            f"{FORMAT_VERSION} (a file written by `specgate baseline update`)",
            value,
        )
    for key, kind, expected in (
        ("scenario", str, "a string"),
        ("scenario_hash", str, "a string"),
        ("provenance", dict, "a mapping"),
        ("requests", dict, "a mapping of request id to {fields, text}"),
    ):
        if not isinstance(data.get(key), kind):
            raise error(key, expected, data.get(key))
    for rid, entry in data["requests"].items():
        where = f"requests.{rid}"
        if not isinstance(rid, str):
            raise error(where, "a request id (a string)", rid)
        if not isinstance(entry, dict) or not isinstance(entry.get("fields"), dict):
            got = entry.get("fields") if isinstance(entry, dict) else entry
            raise error(f"{where}.fields", "a mapping of field name to value", got)
        if "text" in entry and not isinstance(entry["text"], str):
            raise error(f"{where}.text", "a string", entry["text"])
        for name, value in entry["fields"].items():
            if not (
                _is_number(value) or (isinstance(value, list) and all(_is_number(v) for v in value))
            ):
                raise error(f"{where}.fields.{name}", "a number or a list of numbers", value)


def check_fresh(baseline: Baseline, scenario_hash: str, path: Path, scenario_path: Path) -> None:
    if baseline.scenario_hash != scenario_hash:
        raise BaselineError(
            f"{path}: stale baseline: it was measured for scenario hash "
            f"{baseline.scenario_hash[:19]}, but {scenario_path.name} now hashes to "
            f"{scenario_hash[:19]} (its server command, a fingerprinted file, the requests or the adapter changed). Run "
            f"`specgate baseline update {scenario_path}` to re-measure it."
        )


def server_dtype(command: Sequence[str] | str | None) -> str | None:
    """The value of `--dtype` in a server command (its words, or the recorded command line)."""
    if not command:
        return None
    words = shlex.split(command) if isinstance(command, str) else list(command)
    for i, word in enumerate(words):
        if word == "--dtype" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--dtype="):
            return word.split("=", 1)[1]
    return None


def check_dtype(
    baseline: Baseline | None, command: Sequence[str] | None, scenario_path: Path
) -> None:
    """A baseline's numbers hold for one dtype, so the scenario must pin the server's: not
    `--dtype auto` (refserver's and vLLM's auto pick by CPU), not a refserver command without
    `--dtype` (its default is auto), and the dtype the baseline was recorded in."""
    if not command:
        return  # a running server (server_url): its command is not ours to check
    dtype = server_dtype(command)
    runs_refserver = any(w == "refserver" or w.endswith("/refserver") for w in command)
    if dtype == "auto" or (dtype is None and runs_refserver):
        raise BaselineError(
            f"{scenario_path}: the server command {'passes --dtype auto' if dtype else 'has no --dtype'}"
            ", so its dtype depends on the CPU it runs on, but a baseline holds the numbers of "
            "one dtype: pin --dtype float32 or --dtype bfloat16 in the scenario"
        )
    recorded = server_dtype(baseline.provenance.get("server_command")) if baseline else None
    if recorded is not None and dtype is not None and recorded != dtype:
        raise BaselineError(
            f"{scenario_path}: the baseline was recorded with the server in --dtype {recorded}, "
            f"but the scenario runs it in --dtype {dtype}; run the scenario in {recorded} or "
            f"re-record with `specgate baseline update {scenario_path}`"
        )


def write_baseline_atomic(path: Path, baseline: Baseline) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(baseline.to_yaml())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def git_commit(folder: Path) -> str:
    """HEAD's commit of the checkout holding `folder`, with '-dirty' when tracked files have
    uncommitted changes; 'unknown' outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    except Exception:  # provenance must never break a run
        pass
    return f"cpu: {cpu_model()}"


def cpu_model() -> str:
    """This host's CPU model name and core count, e.g. 'AMD EPYC 7B13 (2 cores)'."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores)"


def _torch_version() -> str:
    try:
        import torch

        return str(torch.__version__)
    except Exception:
        return "not installed"


def collect_provenance(
    scenario_path: Path, scenario_hash: str, server_command: str | None, server_url: str
) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": git_commit(scenario_path.parent),
        "host": socket.gethostname(),
        "device": _device(),
        "torch": _torch_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "server_command": server_command or f"(running server at {server_url})",
        "scenario_hash": scenario_hash,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return repr(value)


def diff_baselines(old: Baseline | None, new: Baseline) -> str:
    """What moved, request by request and field by field, as readable lines."""
    if old is None:
        lines = [f"new baseline for {new.scenario} ({len(new.requests)} requests):"]
        for rid, entry in new.requests.items():
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in entry["fields"].items())
            lines.append(f"  + {rid}: {values}")
        return "\n".join(lines)
    lines = []
    if old.scenario_hash != new.scenario_hash:
        lines.append(f"scenario hash: {old.scenario_hash[:19]} -> {new.scenario_hash[:19]}")
    for key in (
        "git_commit",
        "host",
        "device",
        "torch",
        "python",
        "server_command",
        "served_models",
        "engine_version",
        "server_device",
    ):
        if old.provenance.get(key) != new.provenance.get(key):
            lines.append(
                f"provenance.{key}: {old.provenance.get(key)!r} -> {new.provenance.get(key)!r}"
            )
    for rid in [*old.requests, *(r for r in new.requests if r not in old.requests)]:
        if rid not in new.requests:
            lines.append(f"  - {rid}: removed")
            continue
        if rid not in old.requests:
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in new.requests[rid]["fields"].items())
            lines.append(f"  + {rid}: {values}")
            continue
        before, after = old.requests[rid]["fields"], new.requests[rid]["fields"]
        changes = []
        for name in [*before, *(n for n in after if n not in before)]:
            b, a = before.get(name, "<absent>"), after.get(name, "<absent>")
            if b != a:
                delta = ""
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    delta = f" ({'+' if a >= b else ''}{_fmt(a - b)})"
                changes.append(f"      {name}: {_fmt(b)} -> {_fmt(a)}{delta}")
        if old.requests[rid].get("text") != new.requests[rid].get("text"):
            changes.append("      text changed")
        if changes:
            lines.append(f"  ~ {rid}:")
            lines.extend(changes)
    unchanged = sum(
        1
        for rid in new.requests
        if rid in old.requests and old.requests[rid]["fields"] == new.requests[rid]["fields"]
    )
    lines.append(f"{unchanged} of {len(new.requests)} requests unchanged")
    return "\n".join(lines)
