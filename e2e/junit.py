"""JUnit XML of a gate run: one test suite per scenario, one test case per request.

CI systems (GitHub Actions test reporters, GitLab, Jenkins) show these without custom parsing.
A scenario that fails before any request runs (no baseline, server did not start) is one test
case named after the scenario, so the failure is never lost.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from e2e.runner import ScenarioResult


def _requests(result: ScenarioResult) -> list[str]:
    ids = [o.request_id for o in result.outcomes] + [r.request_id for r in result.rows]
    return list(dict.fromkeys(ids))


def _case(suite: ET.Element, result: ScenarioResult, name: str, failures: list[str]) -> None:
    case = ET.SubElement(suite, "testcase", classname=result.name, name=name)
    if result.status == "skipped":
        ET.SubElement(case, "skipped", message="; ".join(result.messages))
    elif failures:
        ET.SubElement(case, "failure", message=failures[0][:200]).text = "\n".join(failures)


def render_junit(results: list[ScenarioResult]) -> str:
    root = ET.Element("testsuites", name="specgate e2e")
    for result in results:
        suite = ET.SubElement(
            root, "testsuite", name=result.name, file=result.path, time=f"{result.duration_s:.3f}"
        )
        requests = _requests(result)
        if not requests:
            failed = result.status in ("failed", "error")
            messages = result.messages or [f"scenario {result.status}"]
            _case(suite, result, result.name, messages if failed else [])
        for request_id in requests:
            failures = [
                f"{row.field}: baseline {row.baseline!r}, measured {row.measured!r} "
                f"({row.tolerance}): {row.verdict}"
                for row in result.rows
                if row.request_id == request_id and not row.ok
            ]
            for outcome in result.outcomes:
                if outcome.request_id == request_id:
                    if outcome.error:
                        failures.append(f"request failed: {outcome.error}")
                    failures += [f"invariant: {m}" for m in outcome.invariant_failures]
            _case(suite, result, request_id, failures)
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for case in suite:
            counts["tests"] += 1
            counts["failures"] += case.find("failure") is not None
            counts["skipped"] += case.find("skipped") is not None
        for key, value in counts.items():
            suite.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(results: list[ScenarioResult], path: Path) -> None:
    path.write_text(render_junit(results), encoding="utf-8")
