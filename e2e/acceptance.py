"""The cross-engine acceptance table: every request of several scenarios as the common record
(SPEC §2.1), side by side, so engines and configurations compare on one definition.

Records come from each scenario's baseline (what was measured and committed) or from a fresh
measurement. Counts an engine only bounds from above are shown with '≤', and the ratios derived
from them with '≥'; values an engine does not report are '-'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from e2e.adapters import AcceptanceRecord, get_adapter, total
from e2e.baseline import load_baseline
from e2e.scenario import Scenario

HEADERS = (
    "request",
    "scenario (adapter)",
    "drafts",
    "draft tokens",
    "accepted",
    "accepted per position",
    "mean acc. length",
    "acceptance rate",
)
ALL_REQUESTS = "(all requests)"


@dataclass
class Column:
    """One scenario's records, request id -> record, in request order."""

    label: str
    records: dict[str, AcceptanceRecord] = field(default_factory=dict)


def column(scenario: Scenario, fields_by_request: Mapping[str, Mapping[str, Any]]) -> Column:
    adapter = get_adapter(scenario.adapter)
    records = {
        rid: adapter.record(fields, scenario.speculative_tokens)
        for rid, fields in fields_by_request.items()
    }
    return Column(f"{scenario.name} ({scenario.adapter})", records)


def column_from_baseline(scenario: Scenario) -> Column:
    """Raises e2e.baseline.BaselineError when the scenario has no readable baseline."""
    baseline = load_baseline(scenario.baseline)
    return column(scenario, {rid: e["fields"] for rid, e in baseline.requests.items()})


def _count(record: AcceptanceRecord, name: str) -> str:
    value = getattr(record, name)
    if value is None:
        return "-"
    return ("≤" if name in record.upper_bounds else "") + str(value)


def _ratio(value: float | None, from_bound: bool) -> str:
    if value is None:
        return "-"
    return ("≥" if from_bound else "") + f"{value:.3f}"


def _cells(request: str, label: str, record: AcceptanceRecord) -> list[str]:
    bounds = record.upper_bounds
    pos = record.accepted_per_position
    return [
        request,
        label,
        _count(record, "num_drafts"),
        _count(record, "num_draft_tokens"),
        _count(record, "num_accepted_tokens"),
        "-" if pos is None else "[" + ", ".join(str(v) for v in pos) + "]",
        _ratio(record.mean_acceptance_length, "num_drafts" in bounds),
        _ratio(record.draft_acceptance_rate, "num_draft_tokens" in bounds),
    ]


def table_rows(columns: list[Column]) -> list[list[str]]:
    """One row per (request, scenario) for every request id, in first-seen order, then one
    total row per scenario."""
    order: list[str] = []
    for col in columns:
        order.extend(rid for rid in col.records if rid not in order)
    rows = []
    for rid in order:
        first = True
        for col in columns:
            if rid in col.records:
                rows.append(_cells(rid if first else "", col.label, col.records[rid]))
                first = False
    for i, col in enumerate(columns):
        rows.append(_cells(ALL_REQUESTS if i == 0 else "", col.label, total(col.records.values())))
    return rows


def render_text(columns: list[Column]) -> str:
    table = [list(HEADERS), *table_rows(columns)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def render_markdown(columns: list[Column]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(columns)]
    return "\n".join(lines)
