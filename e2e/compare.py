"""Compare measured fields with baseline fields under per-field tolerances.

Rules: a field with a tolerance passes when every value is within max(abs, rel*|baseline|) of the
baseline; lists are compared element by element and a length mismatch always fails; a field
without a tolerance must be equal (integer counts are exact unless the scenario gives a
tolerance). A field present on one side only fails, and so does a value that is not a number
(baselines are type-checked at load, but a server can send anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from e2e.scenario import Tolerance

MISSING = "<missing>"


@dataclass(frozen=True)
class Row:
    """One line of the comparison report."""

    request_id: str
    field: str
    baseline: Any
    measured: Any
    tolerance: str
    ok: bool
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.ok:
            return "ok" + (f" ({self.detail})" if self.detail else "")
        return "FAIL" + (f": {self.detail}" if self.detail else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _within(tol: Tolerance | None, baseline: float, measured: float) -> bool:
    if tol is None:
        return measured == baseline
    return tol.allows(baseline, measured)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def compare_field(
    request_id: str, name: str, baseline: Any, measured: Any, tol: Tolerance | None
) -> Row:
    tol_text = tol.describe() if tol else "exact"
    if baseline is MISSING or measured is MISSING:
        side = "measurement" if measured is MISSING else "baseline"
        return Row(request_id, name, baseline, measured, tol_text, False, f"not in the {side}")
    if isinstance(baseline, list) or isinstance(measured, list):
        if not (isinstance(baseline, list) and isinstance(measured, list)):
            return Row(
                request_id, name, baseline, measured, tol_text, False, "list on one side only"
            )
        odd = [v for v in (*baseline, *measured) if not _is_number(v)]
        if odd:
            return Row(
                request_id, name, baseline, measured, tol_text, False, f"not a number: {odd[0]!r}"
            )
        if len(baseline) != len(measured):
            return Row(
                request_id,
                name,
                baseline,
                measured,
                tol_text,
                False,
                f"length {len(measured)} != baseline length {len(baseline)}",
            )
        bad = [
            i
            for i, (b, m) in enumerate(zip(baseline, measured, strict=True))
            if not _within(tol, b, m)
        ]
        detail = ", ".join(f"[{i}] {_fmt(measured[i])} vs {_fmt(baseline[i])}" for i in bad)
        return Row(request_id, name, baseline, measured, tol_text, not bad, detail)
    odd = [v for v in (baseline, measured) if not _is_number(v)]
    if odd:
        return Row(
            request_id, name, baseline, measured, tol_text, False, f"not a number: {odd[0]!r}"
        )
    ok = _within(tol, baseline, measured)
    detail = "" if ok else f"diff {_fmt(measured - baseline)}"
    return Row(request_id, name, baseline, measured, tol_text, ok, detail)


def compare_request(
    request_id: str,
    baseline: dict[str, Any],
    measured: dict[str, Any],
    tolerances: dict[str, Tolerance],
) -> list[Row]:
    """One row per field of the union of both sides, baseline order first."""
    names = list(baseline) + [n for n in measured if n not in baseline]
    return [
        compare_field(
            request_id, n, baseline.get(n, MISSING), measured.get(n, MISSING), tolerances.get(n)
        )
        for n in names
    ]
