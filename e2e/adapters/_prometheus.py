"""The Prometheus text exposition format, read into samples (the one parser of the project)."""

from __future__ import annotations

import re

from e2e.adapters._base import AdapterError

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the Prometheus text exposition format: (name, labels, value)."""
    samples = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise AdapterError(f"/metrics line {lineno} is not a Prometheus sample: {raw!r}")
        name, label_text, value = match.group(1), match.group(3), match.group(4)
        labels = {k: _unescape(v) for k, v in _LABEL.findall(label_text or "")}
        samples.append((name, labels, float(value)))
    return samples


def _unescape(value: str) -> str:
    """Label value escapes of the exposition format: \\\\, \\" and \\n."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
