"""Resolve the implementation under test from a ``module:function`` string.

The default is the op (``cuda_ext``) when it is built for the requested device, and the oracle
otherwise, so the kernel suite runs anywhere and checks the real op wherever it exists.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from refimpl.batch import HybridImpl

log = logging.getLogger(__name__)

ORACLE = "refimpl:hybrid_mtp_ngram"
OP = "cuda_ext:hybrid_mtp_ngram"


@dataclass(frozen=True)
class Impl:
    name: str  # module:function, as a user would type it
    fn: HybridImpl


def load(spec: str) -> Impl:
    """Import ``module:function``; errors name the spec and what was wrong with it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--impl {spec!r}: expected module:function, e.g. {ORACLE}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--impl {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--impl {spec!r}: module {module_name!r} has no callable {attr!r}")
    return Impl(spec, fn)


def default(device_type: str = "cpu") -> Impl:
    """The op if it is built for ``device_type``, else the oracle (with a log line saying why)."""
    try:
        cuda_ext = importlib.import_module("cuda_ext")
        if cuda_ext.is_available(device_type):
            return Impl(OP, cuda_ext.hybrid_mtp_ngram)
        reason = f"cuda_ext is not built for {device_type}"
    except ImportError as exc:
        reason = f"cuda_ext cannot be imported ({exc})"
    log.warning("kernel suite: %s; testing the oracle %s instead", reason, ORACLE)
    return Impl(ORACLE, importlib.import_module("refimpl").hybrid_mtp_ngram)
