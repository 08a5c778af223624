"""Run one scenario end to end: reach its server(s), send its requests, measure, check, compare.

`measure_metrics` is the one measuring path of a metrics scenario (server, requests, adapter,
invariants), shared by `specgate run`, `baseline update` and `compare --measure`; `run_scenario`
adds the baseline comparison and turns everything into a ScenarioResult that the report renders. Failures of the server or of a request become results with messages (and the server
log tail), not exceptions, so one broken scenario never hides the report of the others.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from e2e.adapters import Adapter, AdapterError, Measurement, get_adapter
from e2e.baseline import (
    Baseline,
    BaselineError,
    BaselineFormatError,
    check_dtype,
    check_fresh,
    collect_provenance,
    load_baseline,
)
from e2e.client import Completion, RequestError, send
from e2e.compare import MISSING, Row, compare_request
from e2e.invariants import Context, check_invariants
from e2e.lossless import greedy_with_logprobs, judge
from e2e.scenario import RequestSpec, Scenario
from e2e.server import Endpoint, ServerPool, ServerStartError, describe_server

log = logging.getLogger(__name__)


@dataclass
class RequestOutcome:
    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    invariant_failures: list[str] = field(default_factory=list)
    error: str | None = None
    latency_s: float = 0.0
    record: dict[str, Any] | None = None  # the common acceptance record (SPEC §2.1), as a dict


@dataclass
class ScenarioResult:
    name: str
    path: str
    kind: str
    status: str  # passed | failed | skipped | error
    rows: list[Row] = field(default_factory=list)
    outcomes: list[RequestOutcome] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    server: str = ""
    baseline_path: str | None = None
    baseline_provenance: dict[str, Any] | None = None
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _send_one(url: str, request: RequestSpec, timeout_s: float) -> Completion | Exception:
    try:
        return send(url, request, timeout_s)
    except RequestError as exc:
        return exc


def _send_all(
    url: str, requests: tuple[RequestSpec, ...], concurrency: int, timeout_s: float
) -> list[Completion | Exception]:
    """Send in waves of `concurrency`, each wave released together by a barrier.

    Sequential requests stay on the calling thread, so Ctrl-C interrupts them at once. For waves,
    an interrupt does not wait for requests in flight: they end when teardown kills the server.
    """
    if concurrency == 1:
        return [_send_one(url, request, timeout_s) for request in requests]
    results: list[Completion | Exception] = []
    for start in range(0, len(requests), concurrency):
        wave = requests[start : start + concurrency]
        barrier = threading.Barrier(len(wave))

        def one(
            request: RequestSpec, barrier: threading.Barrier = barrier
        ) -> Completion | Exception:
            barrier.wait()
            return _send_one(url, request, timeout_s)

        pool = ThreadPoolExecutor(max_workers=len(wave))
        try:
            results.extend(pool.map(one, wave))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return results


def _max_tokens(request: RequestSpec) -> int | None:
    body = request.body
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    if value is None and isinstance(body.get("sampling_params"), dict):
        value = body["sampling_params"].get("max_new_tokens")
    return value


def _outcome(
    scenario: Scenario,
    request: RequestSpec,
    result: Completion | Exception,
    adapter: Adapter,
    endpoint: Endpoint,
    before: Any = None,
) -> RequestOutcome:
    if isinstance(result, Exception):
        return RequestOutcome(request.id, error=str(result))
    try:
        measurement: Measurement = adapter.measure(result, endpoint, before)
    except AdapterError as exc:
        return RequestOutcome(
            request.id, text=result.text, error=str(exc), latency_s=result.latency_s
        )
    record = adapter.record(measurement.fields, scenario.speculative_tokens)
    ctx = Context(
        measurement.fields,
        scenario.speculative_tokens,
        _max_tokens(request),
        tuple(measurement.placement_errors),
        record,
        completion=result,
    )
    failures = check_invariants(scenario.adapter, ctx, scenario.invariants)
    return RequestOutcome(
        request.id,
        measurement.fields,
        result.text,
        failures,
        latency_s=result.latency_s,
        record=record.to_dict(),
    )


def measure(scenario: Scenario, endpoint: Endpoint) -> list[RequestOutcome]:
    """Send every request of a metrics scenario and read its metrics through the adapter.

    A sequential adapter (server-wide counters) reads its state before each request, sent
    alone; the others measure each response on its own, so requests go in waves.
    """
    adapter = get_adapter(scenario.adapter)
    if adapter.sequential:
        outcomes = []
        for request in scenario.requests:
            try:
                before = adapter.prepare(endpoint)
                result: Completion | Exception = send(
                    endpoint.url, request, scenario.request_timeout
                )
            except (RequestError, AdapterError) as exc:
                result, before = exc, None
            outcomes.append(_outcome(scenario, request, result, adapter, endpoint, before))
        return outcomes
    results = _send_all(
        endpoint.url, scenario.requests, scenario.concurrency, scenario.request_timeout
    )
    return [
        _outcome(scenario, r, res, adapter, endpoint)
        for r, res in zip(scenario.requests, results, strict=True)
    ]


@dataclass
class Measured:
    """The requests of one metrics scenario, measured on its server."""

    endpoint: Endpoint
    outcomes: list[RequestOutcome]
    # What was measured (SPEC provenance), read while the server ran; None unless asked for.
    provenance: dict[str, Any] | None = None

    def errors(self) -> list[str]:
        return [f"request {o.request_id}: {o.error}" for o in self.outcomes if o.error]

    def invariant_failures(self) -> list[str]:
        return [
            f"invariant failed for {o.request_id}: {m}"
            for o in self.outcomes
            for m in o.invariant_failures
        ]


def measure_metrics(scenario: Scenario, pool: ServerPool, *, provenance: bool = False) -> Measured:
    """Reach (launch or reuse) the server of a metrics scenario and measure every request.

    The one path of `specgate run`, `baseline update` and `compare --measure`, so a baseline holds
    exactly what the gate measures. With `provenance`, what was measured (git commit, host, the
    served models, the device) is recorded too, while the server still runs. A server that does
    not start raises ServerStartError.
    """
    endpoint = pool.endpoint(scenario.server, "server", name=scenario.name)
    measured = Measured(endpoint, measure(scenario, endpoint))
    if provenance:
        facts = collect_provenance(
            scenario.path, scenario.hash, endpoint.masked_command, endpoint.url
        )
        facts.update(describe_server(endpoint))
        measured.provenance = facts
    return measured


def build_baseline(
    scenario: Scenario, outcomes: list[RequestOutcome], provenance: dict[str, Any]
) -> Baseline:
    return Baseline(
        scenario=scenario.name,
        scenario_hash=scenario.hash,
        provenance=provenance,
        requests={o.request_id: {"fields": o.fields, "text": o.text} for o in outcomes},
    )


def compare_with_baseline(
    scenario: Scenario,
    outcomes: list[RequestOutcome],
    baseline: Baseline,
    only_measured: bool = False,
) -> list[Row]:
    """Rows for every measured request; with only_measured, baseline requests that were not
    measured (a deliberate subset) are left out instead of failing."""
    rows: list[Row] = []
    measured_ids = {o.request_id for o in outcomes}
    for outcome in outcomes:
        entry = baseline.requests.get(outcome.request_id)
        if entry is None:
            rows.append(
                Row(
                    outcome.request_id,
                    "*",
                    MISSING,
                    "measured",
                    "-",
                    False,
                    "request not in the baseline",
                )
            )
            continue
        if outcome.error:  # one failing row (the message says why), so the header counts it
            rows.append(
                Row(outcome.request_id, "*", "in baseline", MISSING, "-", False, "request failed")
            )
            continue
        rows.extend(
            compare_request(
                outcome.request_id, entry["fields"], outcome.fields, scenario.tolerances
            )
        )
    for rid in baseline.requests:
        if rid not in measured_ids and not only_measured:
            rows.append(Row(rid, "*", "in baseline", MISSING, "-", False, "request not measured"))
    return rows


def check_baselines(scenarios: list[Scenario]) -> None:
    """Load every existing baseline of `scenarios`, so that a malformed one stops the gate before
    any request is sent (BaselineFormatError). A missing or stale baseline is not malformed: it
    becomes a failed result of its scenario in run_scenario, with the command that fixes it."""
    for scenario in scenarios:
        if scenario.baseline is None:
            continue
        try:
            load_baseline(scenario.baseline)
        except BaselineFormatError:
            raise
        except BaselineError:
            pass


def _server_context(pool: ServerPool, scenario: Scenario, role: str) -> str:
    server = pool.server_for(scenario.servers[role])
    return "\n" + server.failure_context() if server else ""


def skip_reason(scenario: Scenario, pool: ServerPool) -> str | None:
    """Why a server this run would launch cannot run here. With --server-url only a lossless
    scenario's reference is launched (the candidate is the running server)."""
    if pool.override_url is None:
        return scenario.skip_reason()
    if scenario.kind == "lossless":
        reason = scenario.servers["reference"].skip_reason()
        return (
            f"{scenario.name}: the reference server cannot run here: {reason}" if reason else None
        )
    return None


def run_scenario(scenario: Scenario, pool: ServerPool) -> ScenarioResult:
    started = time.monotonic()
    result = ScenarioResult(scenario.name, str(scenario.path), scenario.kind, "passed")
    reason = skip_reason(scenario, pool)
    if reason:
        result.status, result.messages = "skipped", [reason]
        return result
    try:
        if scenario.kind == "lossless":
            _run_lossless(scenario, pool, result)
        else:
            _run_metrics(scenario, pool, result)
    except ServerStartError as exc:
        result.status = "error"
        result.messages.append(str(exc))
    result.duration_s = time.monotonic() - started
    return result


def _run_metrics(scenario: Scenario, pool: ServerPool, result: ScenarioResult) -> None:
    result.baseline_path = str(scenario.baseline)
    try:  # a missing or stale baseline fails before any server is launched
        baseline = load_baseline(scenario.baseline)
        result.baseline_provenance = baseline.provenance
        check_dtype(baseline, scenario.server.command, scenario.path)
        check_fresh(baseline, scenario.hash, scenario.baseline, scenario.path)
    except BaselineError as exc:
        result.messages.append(str(exc))
        result.status = "failed"
        return
    measured = measure_metrics(scenario, pool)
    result.server = measured.endpoint.command or measured.endpoint.url
    result.outcomes = measured.outcomes
    errors, broken = measured.errors(), measured.invariant_failures()
    result.messages.extend(errors)
    context = _server_context(pool, scenario, "server").strip() if errors else ""
    if context:
        result.messages.append(context)
    result.messages.extend(broken)
    result.rows = compare_with_baseline(scenario, measured.outcomes, baseline)
    if errors or broken or not all(r.ok for r in result.rows):
        result.status = "failed"


def _run_lossless(scenario: Scenario, pool: ServerPool, result: ScenarioResult) -> None:
    reference, candidate = pool.endpoints(
        [
            (scenario.servers[role], role, f"{scenario.name}-{role}")
            for role in ("reference", "candidate")
        ]
    )
    result.server = (
        f"reference: {reference.command or reference.url}\n"
        f"candidate: {candidate.command or candidate.url}"
    )
    tolerance = f"near-tie: top-2 gap <= {scenario.near_tie_max_gap:g}"
    requests = tuple(greedy_with_logprobs(r) for r in scenario.requests)
    ref_results = _send_all(reference.url, requests, scenario.concurrency, scenario.request_timeout)
    cand_results = _send_all(
        candidate.url, requests, scenario.concurrency, scenario.request_timeout
    )
    for request, ref, cand in zip(requests, ref_results, cand_results, strict=True):
        if isinstance(ref, Exception) or isinstance(cand, Exception):
            message = str(ref if isinstance(ref, Exception) else cand)
            result.messages.append(f"request {request.id}: {message}")
            result.rows.append(
                Row(request.id, "text", "-", "-", tolerance, False, "request failed")
            )
            continue
        verdict = judge(ref, cand, scenario.near_tie_max_gap)
        result.outcomes.append(RequestOutcome(request.id, text=cand.text, latency_s=cand.latency_s))
        result.rows.append(
            Row(
                request.id,
                "text",
                _clip(ref.text),
                _clip(cand.text),
                tolerance,
                verdict.ok,
                verdict.detail,
            )
        )
    if not all(r.ok for r in result.rows):
        result.status = "failed"


def _clip(text: str, width: int = 40) -> str:
    flat = text.replace("\n", "\\n")
    return flat if len(flat) <= width else flat[: width - 3] + "..."
