"""Metric adapters: read one request's speculative-decoding values the way each engine reports
them, and convert them to one acceptance record (SPEC §2.1).

One module per engine (fastdeploy, vllm, sglang, llamacpp, trtllm), each defining `ADAPTER`, an
e2e.adapters.Adapter that owns the engine's measurement, invariants and concurrency rule. The
registry below finds them, so adding an engine is adding one module here. Modules whose name
starts with '_' are shared helpers, not adapters.
"""

from __future__ import annotations

import importlib
import pkgutil

from e2e.adapters._base import (
    AcceptanceRecord,
    Adapter,
    AdapterError,
    Measurement,
    total,
)
from e2e.adapters._prometheus import parse_prometheus
from e2e.adapters.fastdeploy import SPECULATE_FIELDS, fastdeploy_measure
from e2e.adapters.sglang import SGLANG_FIELDS, sglang_measure
from e2e.adapters.vllm import (
    VLLM_PREFIX,
    SpecCounters,
    settled_counters,
    vllm_counters,
    vllm_delta,
    vllm_measure,
)


def _discover() -> dict[str, Adapter]:
    found: dict[str, Adapter] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        adapter = importlib.import_module(f"{__name__}.{info.name}").ADAPTER
        found[adapter.name] = adapter
    return dict(sorted(found.items()))


ADAPTERS: dict[str, Adapter] = _discover()


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"no adapter {name!r}; known: {sorted(ADAPTERS)}") from None


__all__ = [
    "ADAPTERS",
    "SGLANG_FIELDS",
    "SPECULATE_FIELDS",
    "VLLM_PREFIX",
    "AcceptanceRecord",
    "Adapter",
    "AdapterError",
    "Measurement",
    "SpecCounters",
    "fastdeploy_measure",
    "get_adapter",
    "parse_prometheus",
    "settled_counters",
    "sglang_measure",
    "total",
    "vllm_counters",
    "vllm_delta",
    "vllm_measure",
]
