"""Resolve the implementation under test from a ``module:function`` string.

The default is the op (``cuda_ext``) when it is built for the requested device, and the oracle
otherwise, so the kernel suite runs anywhere and checks the real op wherever it exists. The
fallback is said loudly, and ``SPECGATE_REQUIRE_OP=cpu|cuda`` turns it into an error (CI sets
it, so a broken build can never turn the suite into the oracle compared with itself).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass

from refimpl.batch import HybridImpl

log = logging.getLogger(__name__)

ORACLE = "refimpl:hybrid_mtp_ngram"
OP = "cuda_ext:hybrid_mtp_ngram"


@dataclass(frozen=True)
class Impl:
    name: str  # module:function, as a user would type it
    fn: HybridImpl
    how: str = "given with --impl"  # why this one is under test, for the suite's header


# The op's argument list: 12 positional arguments, then threshold and pad_to_max.
_POSITIONAL = 12


def _check_signature(spec: str, fn: HybridImpl) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return
    try:
        signature.bind(*range(_POSITIONAL), threshold=1024, pad_to_max=False)
    except TypeError as exc:
        raise ValueError(
            f"--impl {spec!r}: {signature} does not take the op's arguments "
            f"(12 positional, then threshold=, pad_to_max=): {exc}"
        ) from None


def load(spec: str) -> Impl:
    """Import ``module:function`` with the current directory first on ``sys.path`` (as pytest
    does with a rootdir); errors name the spec, the module and what was wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--impl {spec!r}: expected module:function, e.g. {ORACLE}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise ValueError(
            f"--impl {spec!r}: cannot import module {module_name!r} (from {cwd}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(module, attr):
        raise ValueError(
            f"--impl {spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
            f"has no attribute {attr!r}"
        )
    fn = getattr(module, attr)
    if not callable(fn):
        raise ValueError(
            f"--impl {spec!r}: {module_name}.{attr} is a {type(fn).__name__}, not callable"
        )
    _check_signature(spec, fn)
    return Impl(spec, fn)


def default(device_type: str = "cpu") -> Impl:
    """The op if it is built for ``device_type``, else the oracle with a warning saying why.

    Under ``SPECGATE_REQUIRE_OP`` a missing op raises ``cuda_ext.build.OpBuildError`` instead.
    """
    from cuda_ext.build import OpBuildError, required_op

    try:
        cuda_ext = importlib.import_module("cuda_ext")
        if cuda_ext.is_available(device_type):
            return Impl(OP, cuda_ext.hybrid_mtp_ngram, f"the op, built for {device_type}")
        reason = f"cuda_ext is not built for {device_type}: {cuda_ext.build_detail(device_type)}"
    except ImportError as exc:
        reason = f"cuda_ext cannot be imported ({exc})"
    if required_op():
        raise OpBuildError(f"SPECGATE_REQUIRE_OP={required_op()}: {reason}")
    log.warning("hybrid_mtp_ngram: %s; using the oracle %s instead", reason, ORACLE)
    return Impl(
        ORACLE,
        importlib.import_module("refimpl").hybrid_mtp_ngram,
        f"NOT the op: {reason}; the oracle is compared with itself",
    )
