"""Helpers for the harness tests: scenario files around tests/e2e/fake_engine.py, orphan checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

FAKE_ENGINE = Path(__file__).resolve().parent / "fake_engine.py"
REPO = Path(__file__).resolve().parents[2]

# SPEC §2's worked example: 51 steps whose per-head counts are [51, 33, 13, 2, 1, 0], K = 5.
SPEC_ACCEPT_NUMS = [5] * 1 + [4] * 1 + [3] * 11 + [2] * 20 + [1] * 18


def fake_server(tmp_path: Path, config: dict[str, Any], name: str = "fake") -> dict[str, Any]:
    config_path = tmp_path / f"{name}-engine.json"
    config_path.write_text(json.dumps(config))
    return {
        "command": ["{python}", str(FAKE_ENGINE), "--port", "{port}", "--config", str(config_path)],
        "startup_timeout": 20,
    }


class _NoAliases(yaml.SafeDumper):
    """The harness refuses anchors and aliases, so a value used twice is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False, allow_unicode=True)


def write_scenario(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp_path / "scenarios" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml({"name": name, **data}))
    return path


def fake_scenario(tmp_path: Path, name: str, engine: dict[str, Any], **overrides: Any) -> Path:
    data: dict[str, Any] = {
        "server": fake_server(tmp_path, engine, name),
        "adapter": "fastdeploy",
        "speculative_tokens": engine.get("k", 5),
        "request_defaults": {"max_tokens": 128, "temperature": 0, "seed": 42},
        "matrix": [
            [
                {"name": "nonstream", "stream": False},
                {"name": "stream", "stream": True, "stream_options": {"include_usage": True}},
            ]
        ],
        "requests": [{"id": "hello", "messages": [{"role": "user", "content": "hi"}]}],
        "tolerances": {"accept_ratio": {"abs": 0.02}, "accepted_tokens_per_head": {"abs": 2}},
        "baseline": f"../baselines/{name}.yaml",
    }
    data.update(overrides)
    return write_scenario(tmp_path, name, data)


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if any(marker in p for p in cmdline) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def survivors(marker: str, timeout_s: float = 10.0) -> list[psutil.Process]:
    """The processes whose command line contains `marker` that are still alive once `timeout_s`
    has passed (empty as soon as none is: `assert not survivors(...)`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = processes_with(marker)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)
