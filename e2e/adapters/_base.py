"""What an engine adapter is, and the one acceptance record every adapter yields.

An adapter owns everything engine-specific about measuring one request: where the engine reports
its speculative-decoding values (response body, stream chunk, /metrics), any state it must read
before the request (server-wide counters), the invariants those values obey, whether requests
must be sent one at a time, and how its native fields convert to the common AcceptanceRecord.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import requests

if TYPE_CHECKING:
    from e2e.client import Completion
    from e2e.invariants import Check
    from e2e.server import Endpoint


class AdapterError(RuntimeError):
    """The response does not carry the metrics this adapter reads."""


@dataclass
class Measurement:
    """One request's native fields (what baselines store and tolerances name), plus placement
    problems, returned as messages so they show up as invariant failures next to the others."""

    fields: dict[str, Any]
    placement_errors: list[str] = field(default_factory=list)


RECORD_COUNTS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")


@dataclass(frozen=True)
class AcceptanceRecord:
    """One request's acceptance with vLLM's definitions (SPEC §2.1), whatever the engine.

    num_drafts: verification steps that carried at least one draft token; num_draft_tokens:
    draft tokens proposed; num_accepted_tokens: draft tokens accepted (the target's bonus token
    not counted); accepted_per_position[i]: steps whose draft token i was accepted. None where
    the engine does not report the value. `upper_bounds` names the counts that the engine only
    bounds from above (FastDeploy charges K draft slots to every step, for instance).
    """

    num_drafts: int | None
    num_draft_tokens: int | None
    num_accepted_tokens: int | None
    accepted_per_position: tuple[int, ...] | None = None
    upper_bounds: frozenset[str] = frozenset()

    @property
    def mean_acceptance_length(self) -> float | None:
        """1 + accepted / drafts: tokens per verification step, the bonus token included."""
        if not self.num_drafts or self.num_accepted_tokens is None:
            return None
        return 1 + self.num_accepted_tokens / self.num_drafts

    @property
    def draft_acceptance_rate(self) -> float | None:
        """accepted / draft tokens."""
        if not self.num_draft_tokens or self.num_accepted_tokens is None:
            return None
        return self.num_accepted_tokens / self.num_draft_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "accepted_per_position": (
                list(self.accepted_per_position) if self.accepted_per_position is not None else None
            ),
            "mean_acceptance_length": self.mean_acceptance_length,
            "draft_acceptance_rate": self.draft_acceptance_rate,
            "upper_bounds": sorted(self.upper_bounds),
        }

    def problems(self) -> list[str]:
        """What no engine's counts can be: negative, more accepted than proposed, per-position
        counts that grow or do not sum to the accepted count."""
        out = []
        counts = {name: getattr(self, name) for name in RECORD_COUNTS}
        negative = [name for name, value in counts.items() if value is not None and value < 0]
        if negative:
            out.append(f"negative counts {negative}: {counts}")
        accepted, proposed = self.num_accepted_tokens, self.num_draft_tokens
        if accepted is not None and proposed is not None and accepted > proposed:
            out.append(f"num_accepted_tokens = {accepted} > num_draft_tokens = {proposed}")
        drafts = self.num_drafts
        if (
            drafts is not None
            and proposed is not None
            and drafts > proposed
            and "num_draft_tokens" not in self.upper_bounds
        ):
            out.append(f"num_drafts = {drafts} > num_draft_tokens = {proposed}")
        pos = self.accepted_per_position
        if pos is not None:
            if any(pos[i + 1] > pos[i] for i in range(len(pos) - 1)):
                out.append(f"accepted_per_position increases: {list(pos)}")
            if accepted is not None and sum(pos) != accepted:
                out.append(
                    f"sum(accepted_per_position) = {sum(pos)} != num_accepted_tokens = {accepted}"
                )
            if drafts is not None and pos and pos[0] > drafts:
                out.append(f"accepted_per_position[0] = {pos[0]} > num_drafts = {drafts}")
        return out


def total(records: Iterable[AcceptanceRecord]) -> AcceptanceRecord:
    """The record of several requests together (counts summed; a count unknown for one request
    is unknown for the total)."""
    records = list(records)

    def summed(name: str) -> int | None:
        values = [getattr(r, name) for r in records]
        return None if not values or any(v is None for v in values) else sum(values)

    positions = [r.accepted_per_position for r in records]
    per_position = None
    if positions and all(p is not None for p in positions):
        width = max(len(p) for p in positions)
        per_position = tuple(sum(p[i] for p in positions if i < len(p)) for i in range(width))
    bounds = frozenset().union(*(r.upper_bounds for r in records)) if records else frozenset()
    return AcceptanceRecord(
        summed("num_drafts"),
        summed("num_draft_tokens"),
        summed("num_accepted_tokens"),
        per_position,
        bounds,
    )


class Adapter:
    """One engine's way of reporting speculative decoding. Subclass it in one module of
    e2e/adapters/ that defines `ADAPTER = YourAdapter()`; nothing else needs to change.

    - `sequential`: per-request values come from server-wide state (counters), so a scenario
      using this adapter must send one request at a time (concurrency 1).
    - `prepare(endpoint)` runs before each request and returns the state `measure` needs
      (counters before the request); stateless adapters return None.
    - `measure(completion, endpoint, before)` reads the native fields of one request.
    - `record(fields, k)` converts native fields to the AcceptanceRecord (k = the scenario's
      num_speculative_tokens, None when unknown). It must accept baseline fields as stored.
    - `invariants`: name -> check over an e2e.invariants.Context.
    """

    name: ClassVar[str]
    sequential: ClassVar[bool] = False
    invariants: ClassVar[Mapping[str, Check]] = {}

    def prepare(self, endpoint: Endpoint) -> Any:
        return None

    def measure(self, completion: Completion, endpoint: Endpoint, before: Any) -> Measurement:
        raise NotImplementedError

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        raise NotImplementedError


def is_metric_value(value: Any) -> bool:
    """A number or a list of numbers (not a bool, a string or a nested object)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )


def int_or_none(value: Any) -> int | None:
    """A count from a baseline or a response (floats like 12.0 from Prometheus included)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(value)


def completion_tokens(completion: Completion, fields: dict[str, Any]) -> list[str]:
    """Copy usage.completion_tokens into fields; the placement error when it is missing."""
    usage = completion.usage or {}
    if "completion_tokens" in usage:
        fields["completion_tokens"] = usage["completion_tokens"]
        return []
    hint = " (streaming: ask for stream_options.include_usage)" if completion.request.stream else ""
    return ["the response has no usage.completion_tokens" + hint]


def fetch_metrics(metrics_url: str, timeout_s: float = 10.0) -> str:
    """The text of an engine's metrics endpoint (Prometheus for vLLM, JSON for TensorRT-LLM);
    an unreachable or failing endpoint is an AdapterError naming the URL."""
    try:
        response = requests.get(metrics_url, timeout=timeout_s)
    except requests.RequestException as exc:
        raise AdapterError(f"cannot read {metrics_url}: {exc}") from exc
    if response.status_code != 200:
        raise AdapterError(f"{metrics_url}: HTTP {response.status_code}")
    return response.text
