"""Metric adapters: read one request's speculative-decoding values the way each engine reports them.

- fastdeploy: `speculate_metrics` in the response (SPEC §2 placement): `choices[0]` of a
  non-streaming body; in a stream, the last chunk that carries choices, null on earlier chunks.
- vllm: Prometheus counters `vllm:spec_decode_num_drafts`, `..._num_draft_tokens`,
  `..._num_accepted_tokens`, `..._num_accepted_tokens_per_pos{position}` (with or without the
  `_total` suffix). Per-request values are deltas around a request sent alone.
- sglang: `meta_info` of the native /generate response (`spec_verify_ct`, `completion_tokens`,
  and, in newer versions, `spec_accept_length` etc.).

Each adapter returns a flat mapping field -> number or list of numbers. Those are the fields that
baselines store and tolerances name. Placement problems are returned as messages, not raised,
so they show up as invariant failures next to the other checks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from e2e.client import Completion

SPECULATE_FIELDS = (
    "accepted_tokens",
    "rejected_tokens",
    "accept_ratio",
    "average_accept_length",
    "accepted_tokens_per_head",
    "accept_ratio_per_head",
)
VLLM_PREFIX = "vllm:spec_decode_"
SGLANG_FIELDS = (
    "completion_tokens",
    "spec_verify_ct",
    "spec_accept_length",
    "spec_accept_rate",
    "spec_num_correct_drafts",
    "spec_num_proposed_drafts",
)


class AdapterError(RuntimeError):
    """The response does not carry the metrics this adapter reads."""


@dataclass
class Measurement:
    fields: dict[str, Any]
    placement_errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# fastdeploy


def fastdeploy_measure(completion: Completion) -> Measurement:
    rid = completion.request.id
    errors: list[str] = []
    if completion.body is not None:
        metrics = completion.body["choices"][0].get("speculate_metrics")
        if metrics is None:
            raise AdapterError(f"request {rid!r}: no choices[0].speculate_metrics in the response")
    else:
        with_choices = [i for i, c in enumerate(completion.chunks) if c.get("choices")]
        carrying = [
            i
            for i in with_choices
            if completion.chunks[i]["choices"][0].get("speculate_metrics") is not None
        ]
        if not carrying:
            raise AdapterError(
                f"request {rid!r}: no stream chunk carries choices[0].speculate_metrics"
            )
        last = with_choices[-1]
        if carrying != [last]:
            errors.append(
                f"speculate_metrics must be on the last chunk with choices only (chunk "
                f"{last}); found on chunks {carrying}"
            )
        metrics = completion.chunks[carrying[-1]]["choices"][0]["speculate_metrics"]
    if not isinstance(metrics, dict):
        raise AdapterError(f"request {rid!r}: speculate_metrics is not an object: {metrics!r}")
    fields = {k: v for k, v in metrics.items() if _is_metric_value(v)}
    missing = [k for k in SPECULATE_FIELDS if k not in fields]
    if missing:
        errors.append(f"speculate_metrics lacks fields {missing}")
    usage = completion.usage or {}
    if "completion_tokens" in usage:
        fields["completion_tokens"] = usage["completion_tokens"]
    else:
        errors.append(
            "the response has no usage.completion_tokens"
            + (
                " (streaming: ask for stream_options.include_usage)"
                if completion.request.stream
                else ""
            )
        )
    return Measurement(fields, errors)


def _is_metric_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )


# ---------------------------------------------------------------------------------------------
# vllm (Prometheus)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the Prometheus text exposition format: (name, labels, value)."""
    samples = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise AdapterError(f"/metrics line {lineno} is not a Prometheus sample: {raw!r}")
        name, _, label_text, value = match.group(1), match.group(2), match.group(3), match.group(4)
        labels = {k: _unescape(v) for k, v in _LABEL.findall(label_text or "")}
        samples.append((name, labels, float(value)))
    return samples


def _unescape(value: str) -> str:
    """Label value escapes of the exposition format: \\\\, \\" and \\n."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


@dataclass(frozen=True)
class SpecCounters:
    drafts: float
    draft_tokens: float
    accepted_tokens: float
    per_pos: dict[int, float]


def vllm_counters(text: str) -> SpecCounters:
    """Sum the spec-decode counters over all label sets (engines, models), per position."""
    totals = {"num_drafts": 0.0, "num_draft_tokens": 0.0, "num_accepted_tokens": 0.0}
    per_pos: dict[int, float] = {}
    seen = False
    for name, labels, value in parse_prometheus(text):
        if not name.startswith(VLLM_PREFIX):
            continue
        short = name[len(VLLM_PREFIX) :]
        if short.endswith("_created"):
            continue
        short = short.removesuffix("_total")
        if short == "num_accepted_tokens_per_pos":
            if "position" not in labels:
                raise AdapterError(f"{name} sample without a position label: {labels}")
            pos = int(labels["position"])
            per_pos[pos] = per_pos.get(pos, 0.0) + value
            seen = True
        elif short in totals:
            totals[short] += value
            seen = True
    if not seen:
        raise AdapterError(
            "/metrics has no vllm:spec_decode_* counters (is speculative decoding "
            "on, and is this a vLLM-compatible server?)"
        )
    return SpecCounters(
        totals["num_drafts"], totals["num_draft_tokens"], totals["num_accepted_tokens"], per_pos
    )


def vllm_delta(before: SpecCounters, after: SpecCounters) -> dict[str, Any]:
    """Per-request fields from two scrapes around one request."""
    drafts = round(after.drafts - before.drafts)
    draft_tokens = round(after.draft_tokens - before.draft_tokens)
    accepted = round(after.accepted_tokens - before.accepted_tokens)
    positions = sorted(set(before.per_pos) | set(after.per_pos))
    per_pos = [round(after.per_pos.get(p, 0.0) - before.per_pos.get(p, 0.0)) for p in positions]
    return {
        "num_drafts": drafts,
        "num_draft_tokens": draft_tokens,
        "num_accepted_tokens": accepted,
        "accepted_tokens_per_pos": per_pos,
        "mean_acceptance_length": (1 + accepted / drafts) if drafts else 0.0,
        "draft_acceptance_rate": accepted / draft_tokens if draft_tokens else 0.0,
    }


def scrape(metrics_url: str, timeout_s: float = 10.0) -> str:
    try:
        response = requests.get(metrics_url, timeout=timeout_s)
    except requests.RequestException as exc:
        raise AdapterError(f"cannot read {metrics_url}: {exc}") from exc
    if response.status_code != 200:
        raise AdapterError(f"{metrics_url}: HTTP {response.status_code}")
    return response.text


def settled_counters(metrics_url: str, settle_s: float = 2.0) -> SpecCounters:
    """Counters once two scrapes 0.1 s apart agree: engines update them a little after the
    response is sent. Gives up waiting after settle_s and returns the last scrape."""
    deadline = time.monotonic() + settle_s
    current = vllm_counters(scrape(metrics_url))
    while time.monotonic() < deadline:
        time.sleep(0.1)
        following = vllm_counters(scrape(metrics_url))
        if following == current:
            return current
        current = following
    return current


def vllm_measure(completion: Completion, before: SpecCounters, after: SpecCounters) -> Measurement:
    fields = vllm_delta(before, after)
    usage = completion.usage or {}
    errors = []
    if "completion_tokens" in usage:
        fields["completion_tokens"] = usage["completion_tokens"]
    else:
        errors.append("the response has no usage.completion_tokens")
    return Measurement(fields, errors)


# ---------------------------------------------------------------------------------------------
# sglang


def sglang_measure(completion: Completion) -> Measurement:
    rid = completion.request.id
    source = (
        completion.body
        if completion.body is not None
        else (completion.chunks[-1] if completion.chunks else {})
    )
    meta = source.get("meta_info")
    if meta is None and source.get("choices"):
        meta = source["choices"][0].get("meta_info")
    if not isinstance(meta, dict):
        raise AdapterError(f"request {rid!r}: no meta_info in the response")
    if "spec_verify_ct" not in meta:
        raise AdapterError(
            f"request {rid!r}: meta_info has no spec_verify_ct (is speculative decoding on?)"
        )
    fields = {k: meta[k] for k in SGLANG_FIELDS if k in meta and _is_metric_value(meta[k])}
    verify = fields["spec_verify_ct"]
    tokens = fields.get("completion_tokens", 0)
    fields["average_accept_length"] = tokens / verify if verify else 0.0
    return Measurement(fields, [])


MEASURE: dict[str, Callable[..., Measurement]] = {
    "fastdeploy": fastdeploy_measure,
    "sglang": sglang_measure,
}
