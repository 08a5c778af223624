"""Typed access to a scenario's YAML mappings, with the error messages people read.

Every error names the file, the full key path and what was expected, e.g.
"FILE: key 'requests[2].max_tokens': expected a non-negative integer, got -1".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from e2e import request_fields
from e2e.scenario import placeholders
from e2e.scenario.placeholders import REFSERVER_PLACEHOLDER
from e2e.scenario.schema import ScenarioError


class Reader:
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
                    f"one of the known keys {sorted(allowed)}{did_you_mean(str(key), allowed)}",
                    show_got=False,
                )

    def child(self, key: str, value: Any) -> Reader:
        where = f"{self.where}.{key}" if self.where else key
        return Reader(self.path, value, where)

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


def did_you_mean(key: str, allowed: Iterable[str]) -> str:
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


def scenario_relative(scenario_path: Path, name: str) -> Path:
    """A path written in a scenario (baseline, messages_from, fingerprint, cwd): relative to the
    scenario file, so a scenario works from any current directory. A leading ``{refserver}``
    stands for the installed refserver package folder (its assets ship in the wheel)."""
    if name.startswith(REFSERVER_PLACEHOLDER):
        base = placeholders.refserver_folder()
        if base is None:
            raise ScenarioError(f"{scenario_path}: {name!r}: refserver is not installed")
        return (base / name[len(REFSERVER_PLACEHOLDER) :].lstrip("/")).resolve()
    return (scenario_path.parent / name).resolve()
