"""TensorRT-LLM (`trtllm-serve`): `specDecodingStats` of the iteration stats at GET /metrics.

trtllm-serve answers /metrics with a JSON list of the iteration stats collected since the last
call (the server needs `enable_iter_perf_stats: true` in its LLM API options). Each entry that
ran speculation has `specDecodingStats` with `numDraftTokens`, `numAcceptedTokens` (draft tokens
accepted), `numRequestsWithDraftTokens` and `acceptanceLength` (tokens per step for requests with
drafts). Older releases return each entry as a JSON string; both are read.

The stats are server-wide, so the adapter is sequential: it drains /metrics before a request and
sums every iteration reported after it. Native fields are the sums over the request's iterations,
under TRT-LLM's names, plus `iterations` (iterations that carried drafts).

Conversion to the common record (SPEC §2.1): num_drafts = numRequestsWithDraftTokens (one request
at a time: the iterations that verified its drafts), num_draft_tokens = numDraftTokens,
num_accepted_tokens = numAcceptedTokens; no per-position counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from e2e.adapters._base import (
    AcceptanceRecord,
    Adapter,
    AdapterError,
    Measurement,
    completion_tokens,
    fetch_metrics,
    int_or_none,
)
from e2e.client import Completion
from e2e.invariants import (
    Check,
    Context,
    acceptance_record,
    metrics_placement,
    need,
    within_max_tokens,
)

if TYPE_CHECKING:
    from e2e.server import Endpoint

SUMMED = ("numDraftTokens", "numAcceptedTokens", "numRequestsWithDraftTokens")
MAX_DRAIN_SCRAPES = 50


def iteration_stats(text: str, url: str = "/metrics") -> list[dict[str, Any]]:
    """The entries of one /metrics answer, each a mapping."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{url}: not JSON ({exc}); is this trtllm-serve?") from exc
    if not isinstance(data, list):
        raise AdapterError(
            f"{url}: expected a JSON list of iteration stats, got {type(data).__name__}"
        )
    entries = []
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            try:
                entry = json.loads(entry)
            except json.JSONDecodeError as exc:
                raise AdapterError(f"{url}: entry {i} is a string but not JSON: {exc}") from exc
        if not isinstance(entry, dict):
            raise AdapterError(f"{url}: entry {i} is not an object: {entry!r}")
        entries.append(entry)
    return entries


def scrape_stats(metrics_url: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    return iteration_stats(fetch_metrics(metrics_url, timeout_s), metrics_url)


def summarize(entries: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Fields of one request from the iterations that ran while it was alone on the server."""
    sums = dict.fromkeys(SUMMED, 0)
    iterations = 0
    errors = []
    for entry in entries:
        spec = entry.get("specDecodingStats")
        if not isinstance(spec, dict) or not spec.get("numDraftTokens"):
            continue
        iterations += 1
        for name in SUMMED:
            sums[name] += int_or_none(spec.get(name)) or 0
        if (spec.get("numRequestsWithDraftTokens") or 0) > 1:
            errors.append(
                f"iteration {entry.get('iter')} had {spec['numRequestsWithDraftTokens']} requests "
                "with drafts (another request ran at the same time?)"
            )
    fields: dict[str, Any] = {"iterations": iterations, **sums}
    reqs = sums["numRequestsWithDraftTokens"]
    fields["acceptanceLength"] = (sums["numAcceptedTokens"] + reqs) / reqs if reqs else 0.0
    return fields, errors


def drafts(ctx: Context) -> list[str]:
    """accepted <= draft tokens <= K per request-iteration."""
    if need(ctx, *SUMMED):
        return []
    f = ctx.fields
    out = []
    if f["numAcceptedTokens"] > f["numDraftTokens"]:
        out.append(
            f"numAcceptedTokens = {f['numAcceptedTokens']} > numDraftTokens = {f['numDraftTokens']}"
        )
    limit = f["numRequestsWithDraftTokens"] * ctx.k if ctx.k is not None else None
    if limit is not None and f["numDraftTokens"] > limit:
        out.append(
            f"numDraftTokens = {f['numDraftTokens']} > numRequestsWithDraftTokens*K = {limit}"
        )
    return out


class TrtllmAdapter(Adapter):
    name = "trtllm"
    sequential = True
    invariants: ClassVar[dict[str, Check]] = {
        "drafts": drafts,
        "metrics_placement": metrics_placement,
        "within_max_tokens": within_max_tokens,
        "acceptance_record": acceptance_record,
    }
    settle_s = 5.0

    def prepare(self, endpoint: Endpoint) -> None:
        """Drain the stats of everything before this request."""
        for _ in range(MAX_DRAIN_SCRAPES):
            if not scrape_stats(endpoint.metrics_url):
                return
        raise AdapterError(f"{endpoint.metrics_url} never ran empty: is another client busy?")

    def measure(self, completion: Completion, endpoint: Endpoint, before: Any) -> Measurement:
        """Everything reported after the request; the last iterations can arrive a little after
        the response, so this reads until an empty answer follows a non-empty one."""
        entries: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            batch = scrape_stats(endpoint.metrics_url)
            if not batch and entries:
                break
            entries.extend(batch)
            if not batch:
                time.sleep(0.1)
        if not entries:
            raise AdapterError(
                f"request {completion.request.id!r}: {endpoint.metrics_url} reported no iteration "
                "stats (start trtllm-serve with enable_iter_perf_stats: true)"
            )
        fields, errors = summarize(entries)
        errors += completion_tokens(completion, fields)
        return Measurement(fields, errors)

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        return AcceptanceRecord(
            num_drafts=int_or_none(fields.get("numRequestsWithDraftTokens")),
            num_draft_tokens=int_or_none(fields.get("numDraftTokens")),
            num_accepted_tokens=int_or_none(fields.get("numAcceptedTokens")),
        )


ADAPTER = TrtllmAdapter()
