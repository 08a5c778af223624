"""Placeholders of scenario files: {port}, {port:NAME}, {python}, {env:NAME} in server commands,
env values and metrics URLs, and a leading {refserver} in paths.

Ports and {python} change per run and per machine without changing what is measured, so they are
filled only at launch (substitute); {env:NAME} is filled for the scenario hash too (expand_env),
so switching a model through the environment makes the baseline stale.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

PLACEHOLDER = re.compile(
    r"\{(port(?::[A-Za-z_][A-Za-z0-9_]*)?|python|env:[A-Za-z_][A-Za-z0-9_]*)\}"
)
REFSERVER_PLACEHOLDER = "{refserver}"


def expand_env(text: str) -> str:
    """Fill {env:NAME} placeholders whose variable is set; leave every other placeholder."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("env:") and token[4:] in os.environ:
            return os.environ[token[4:]]
        return match.group(0)

    return PLACEHOLDER.sub(replace, text)


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

    return PLACEHOLDER.sub(replace, text)


def missing_env(texts: Iterable[str]) -> str | None:
    """The first {env:NAME} of `texts` whose variable is unset, or None."""
    for text in texts:
        for match in PLACEHOLDER.finditer(text):
            name = match.group(1)
            if name.startswith("env:") and name[4:] not in os.environ:
                return name[4:]
    return None


def port_names(texts: Iterable[str]) -> list[str]:
    """Names of the {port:NAME} placeholders of `texts` in order of appearance, '' for {port}."""
    names: list[str] = []
    for text in texts:
        for match in PLACEHOLDER.finditer(text):
            token = match.group(1)
            if token.startswith("port"):
                name = token[5:] if ":" in token else ""
                if name not in names:
                    names.append(name)
    return names


def is_placeholder(word: str) -> bool:
    return PLACEHOLDER.fullmatch(word) is not None


def find_program(program: str, cwd: str | None) -> str | None:
    """Where `program` runs from: a relative path with a '/' is taken from the server's cwd,
    as Popen does; a bare name is looked up on PATH."""
    if "/" in program and cwd and not os.path.isabs(program):
        return shutil.which(os.path.join(cwd, program))
    return shutil.which(program)


def refserver_folder() -> Path | None:
    """The installed refserver package folder ({refserver} in paths; its assets ship in the
    wheel), or None when refserver is not installed."""
    spec = importlib.util.find_spec("refserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
