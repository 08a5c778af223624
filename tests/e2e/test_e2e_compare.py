"""Tolerance semantics of the comparison, and the report rendering."""

from __future__ import annotations

import pytest

from e2e.compare import compare_field, compare_request
from e2e.report import render_markdown, render_text
from e2e.runner import ScenarioResult
from e2e.scenario import Tolerance


def test_integer_counts_are_exact_without_a_tolerance() -> None:
    assert compare_field("r", "accepted_tokens", 100, 100, None).ok
    row = compare_field("r", "accepted_tokens", 100, 101, None)
    assert not row.ok and row.tolerance == "exact" and "diff 1" in row.verdict


@pytest.mark.parametrize(
    ("tol", "baseline", "measured", "ok"),
    [
        (Tolerance(abs=0.02), 0.49, 0.51, True),
        (Tolerance(abs=0.02), 0.49, 0.5101, False),
        (Tolerance(rel=0.1), 200.0, 219.0, True),
        (Tolerance(rel=0.1), 200.0, 221.0, False),
        (Tolerance(abs=1, rel=0.01), 10, 11, True),  # either bound suffices
        (Tolerance(abs=1, rel=0.5), 10, 14, True),
        (Tolerance(abs=1, rel=0.01), 10, 12, False),
        (Tolerance(abs=2), 13, 15, True),  # integer count with an explicit tolerance
    ],
)
def test_scalar_tolerances(tol: Tolerance, baseline: float, measured: float, ok: bool) -> None:
    assert compare_field("r", "f", baseline, measured, tol).ok is ok


def test_lists_are_compared_per_element_and_name_the_failing_elements() -> None:
    tol = Tolerance(abs=2)
    assert compare_field("r", "h", [51, 33, 13, 2, 1, 0], [52, 31, 15, 2, 1, 0], tol).ok
    row = compare_field("r", "h", [51, 33, 13, 2, 1, 0], [51, 36, 13, 2, 1, 4], tol)
    assert not row.ok
    assert "[1] 36 vs 33" in row.detail and "[5] 4 vs 0" in row.detail


def test_list_length_mismatch_always_fails_even_with_a_huge_tolerance() -> None:
    row = compare_field("r", "h", [51, 33, 13, 2, 1, 0], [51, 33, 13, 2], Tolerance(abs=1e9))
    assert not row.ok and "length 4 != baseline length 6" in row.detail


def test_fields_on_one_side_only_fail() -> None:
    rows = compare_request("r", {"a": 1, "b": 2}, {"a": 1, "c": 3}, {})
    verdicts = {r.field: (r.ok, r.detail) for r in rows}
    assert verdicts == {
        "a": (True, ""),
        "b": (False, "not in the measurement"),
        "c": (False, "not in the baseline"),
    }


def test_report_has_one_row_per_field_with_all_columns() -> None:
    rows = compare_request(
        "hello/stream",
        {"accept_ratio": 0.49, "accepted_tokens": 100},
        {"accept_ratio": 0.55, "accepted_tokens": 100},
        {"accept_ratio": Tolerance(abs=0.02)},
    )
    result = ScenarioResult("demo", "/x/demo.yaml", "metrics", "failed", rows=rows)
    text = render_text([result])
    assert "[FAILED] demo" in text
    line = next(x for x in text.splitlines() if "accept_ratio" in x)
    for cell in ("hello/stream", "0.49", "0.55", "abs 0.02", "FAIL"):
        assert cell in line
    md = render_markdown([result])
    assert "| request | field | baseline | measured | tolerance | verdict |" in md
    assert "| hello/stream | accept_ratio | 0.49 | 0.55 | abs 0.02 | **FAIL: diff 0.06** |" in md


@pytest.mark.parametrize(
    ("baseline", "measured", "detail"),
    [
        (48, "48", "not a number: '48'"),
        (0.49, None, "not a number: None"),
        ([1, 2], [1, "x"], "not a number: 'x'"),
        (True, 1, "not a number: True"),
    ],
)
def test_a_value_that_is_not_a_number_fails_its_row(baseline, measured, detail) -> None:
    """A server can send anything: the row fails with the value, the report never crashes."""
    row = compare_field("r", "accept_ratio", baseline, measured, Tolerance(abs=0.02))
    assert not row.ok and row.verdict == f"FAIL: {detail}"
