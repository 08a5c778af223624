"""The comparison report: one row per field (baseline, measured, tolerance, verdict), as plain text
for terminals and pytest failures, and as markdown for CI step summaries. Results are also saved as
JSON so `specgate report` can re-render the last run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from e2e.compare import MISSING, Row
from e2e.runner import RequestOutcome, ScenarioResult

HEADERS = ("request", "field", "baseline", "measured", "tolerance", "verdict")
CELL_WIDTH = 48


def _cell(value: Any) -> str:
    if value is MISSING or value == MISSING:
        return "-"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list):
        text = "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) + "]"
    else:
        text = str(value)
    return text


def _clip(text: str, width: int = CELL_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _row_cells(row: Row) -> list[str]:
    return [
        row.request_id,
        row.field,
        _cell(row.baseline),
        _cell(row.measured),
        row.tolerance,
        row.verdict,
    ]


def _summary_line(result: ScenarioResult) -> str:
    """Status, then what failed: rows (a failed request counts as one row) and invariants."""
    failing = sum(1 for r in result.rows if not r.ok)
    counts = f", {failing}/{len(result.rows)} rows failing" if result.rows else ""
    broken = sum(len(o.invariant_failures) for o in result.outcomes)
    if broken:
        counts += f", {broken} invariant failure{'s' if broken > 1 else ''}"
    return f"[{result.status.upper()}] {result.name} ({result.kind}, {result.duration_s:.1f} s{counts})"


def _provenance_line(result: ScenarioResult) -> str | None:
    p = result.baseline_provenance
    if not p:
        return None
    engine = f", engine {p['engine_version']}" if "engine_version" in p else ""
    return (
        f"baseline: {result.baseline_path} (measured {p.get('date')}, commit "
        f"{str(p.get('git_commit'))[:12]}, {p.get('server_device', p.get('device'))}{engine}, "
        f"harness torch {p.get('torch')})"
    )


def render_text(results: list[ScenarioResult], only_failing_rows: bool = False) -> str:
    blocks = []
    for result in results:
        lines = [_summary_line(result)]
        if result.server:
            lines.extend("server: " + s for s in result.server.splitlines())
        prov = _provenance_line(result)
        if prov:
            lines.append(prov)
        lines.extend(result.messages)
        rows = [r for r in result.rows if not (only_failing_rows and r.ok)]
        if rows:
            # Every cell is clipped to keep the table readable except the verdict, which
            # carries the detail (which elements failed, and by how much).
            table = [list(HEADERS)] + [
                [*(_clip(c) for c in _row_cells(r)[:-1]), r.verdict] for r in rows
            ]
            widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS) - 1)]
            for cells in table:
                lines.append(
                    "  "
                    + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False))
                    + "  "
                    + cells[-1]
                )
        blocks.append("\n".join(lines))
    totals = _totals(results)
    blocks.append(f"specgate e2e: {totals}")
    return "\n\n".join(blocks)


def _totals(results: list[ScenarioResult]) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no scenarios"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(results: list[ScenarioResult]) -> str:
    icon = {"passed": "✅", "failed": "❌", "error": "💥", "skipped": "⏭️"}
    out = ["# specgate e2e report", "", f"**{_totals(results)}**", ""]
    for result in results:
        out.append(f"## {icon.get(result.status, '')} {result.name} — {result.status}")
        out.append("")
        out.append(f"`{result.path}` · {result.kind} · {result.duration_s:.1f} s")
        if result.server:
            out.append("")
            out.extend(f"- server: `{s}`" for s in result.server.splitlines())
        prov = _provenance_line(result)
        if prov:
            out.append(f"- {prov}")
        if result.messages:
            out.append("")
            out.append("```")
            out.extend(result.messages)
            out.append("```")
        if result.rows:
            out.append("")
            out.append("| " + " | ".join(HEADERS) + " |")
            out.append("|" + "---|" * len(HEADERS))
            for row in result.rows:
                cells = _row_cells(row)
                if not row.ok:
                    cells[-1] = f"**{cells[-1]}**"
                out.append("| " + " | ".join(_md(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def save_results(results: list[ScenarioResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = [asdict(r) for r in results]
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")


def load_results(path: Path) -> list[ScenarioResult]:
    data = json.loads(path.read_text(encoding="utf-8"))
    results = []
    for item in data:
        item["rows"] = [Row(**r) for r in item["rows"]]
        item["outcomes"] = [RequestOutcome(**o) for o in item["outcomes"]]
        results.append(ScenarioResult(**item))
    return results
