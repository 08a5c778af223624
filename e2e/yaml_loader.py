"""The one YAML loader of the harness, shared by scenario and baseline files.

It is PyYAML's SafeLoader (plain data only, no Python tags) that also refuses, naming the line:

- bytes that are not UTF-8 text;
- a key given twice in one mapping (PyYAML would silently keep the last one);
- anchors, aliases and merge keys (``&name``, ``*name``, ``<<``) altogether. This is the
  simplest rule that stops alias bombs (a few hundred bytes that expand to millions of nodes
  when the data is copied, hashed or sent); a scenario repeats values with
  ``request_defaults`` and ``matrix`` instead, and baselines are written without aliases;
- nesting deeper than MAX_DEPTH (PyYAML composes recursively: deep input is slow, then a
  RecursionError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_DEPTH = 64


class YAMLFileError(ValueError):
    """A file that is not UTF-8, not valid YAML, or uses what the loader refuses; names the file."""


class _Refused(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(problem=f"an alias (*{event.anchor}) {_NO_ALIASES}",
                           problem_mark=event.start_mark)  # fmt: skip
        if getattr(event, "anchor", None) is not None:
            raise _Refused(problem=f"an anchor (&{event.anchor}) {_NO_ALIASES}",
                           problem_mark=event.start_mark)  # fmt: skip
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(
                    problem=f"nested more than {MAX_DEPTH} levels deep",
                    problem_mark=event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(problem=f"a merge key (<<) {_NO_ALIASES}",
                               problem_mark=key_node.start_mark)  # fmt: skip
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if earlier is not None:
                raise _Refused(
                    problem=f"key {key!r} appears twice in one mapping (first on line {earlier})",
                    problem_mark=key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_NO_ALIASES = (
    "is not allowed: anchors and aliases are refused in scenario and baseline files "
    "(write the value out; a scenario repeats values with request_defaults and matrix)"
)


def load_yaml(path: Path) -> Any:
    """The data in the YAML file at ``path``. OSError (missing, unreadable) passes through."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YAMLFileError(
            f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
            "expected a YAML file (UTF-8 text)"
        ) from None
    loader = _Loader(text)
    loader.name = str(path)  # marks (line numbers in errors) name the file
    try:
        return loader.get_single_data()
    except _Refused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        raise YAMLFileError(f"{path}: {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise YAMLFileError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
