"""vLLM: Prometheus counter deltas around a request sent alone, plus the per-request block.

Counters: `vllm:spec_decode_num_drafts`, `..._num_draft_tokens`, `..._num_accepted_tokens`,
`..._num_accepted_tokens_per_pos{position}` (exported with a `_total` suffix, one series per
engine and model; summed). They are server-wide, so the adapter is sequential: the scenario must
send one request at a time and the delta around it is that request's.

With `--per-request-spec-decode-metrics summary|detailed`, vLLM also reports the request's own
values under `metrics.speculative_decoding` (non-streaming: the body; streaming: the final usage
chunk, sent only with `stream_options.include_usage`). Its counts are kept as the fields
`speculative_decoding.*`, and the invariant `per_request_block` requires them to equal the
counter deltas: two independent paths through the engine that must agree.

The native fields are already the common record's definitions (SPEC §2.1).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
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
from e2e.adapters._prometheus import parse_prometheus
from e2e.client import Completion
from e2e.invariants import (
    DERIVED_ABS_TOL,
    Check,
    Context,
    acceptance_record,
    metrics_placement,
    need,
    within_max_tokens,
)

if TYPE_CHECKING:
    from e2e.server import Endpoint

VLLM_PREFIX = "vllm:spec_decode_"
BLOCK_PREFIX = "speculative_decoding."
# Counts of the per-request block kept as fields (the two ratios follow from them).
BLOCK_COUNTS = (
    "num_spec_steps",
    "num_draft_tokens",
    "num_accepted_draft_tokens",
    "acceptance_histogram",
)


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


def settled_counters(metrics_url: str, settle_s: float = 2.0) -> SpecCounters:
    """Counters once two scrapes 0.1 s apart agree: engines update them a little after the
    response is sent. Gives up waiting after settle_s and returns the last scrape."""
    deadline = time.monotonic() + settle_s
    current = vllm_counters(fetch_metrics(metrics_url))
    while time.monotonic() < deadline:
        time.sleep(0.1)
        following = vllm_counters(fetch_metrics(metrics_url))
        if following == current:
            return current
        current = following
    return current


def per_request_block(completion: Completion) -> dict[str, Any] | None:
    """`metrics.speculative_decoding` of the body, or of the stream chunk that carries it."""
    sources = [completion.body] if completion.body is not None else completion.chunks
    for source in reversed(sources):
        metrics = source.get("metrics") if isinstance(source, dict) else None
        if isinstance(metrics, dict) and isinstance(metrics.get("speculative_decoding"), dict):
            return metrics["speculative_decoding"]
    return None


def vllm_measure(completion: Completion, before: SpecCounters, after: SpecCounters) -> Measurement:
    fields = vllm_delta(before, after)
    block = per_request_block(completion)
    errors = []
    if block is not None:
        missing = [k for k in BLOCK_COUNTS if k not in block]
        if missing:
            errors.append(f"metrics.speculative_decoding lacks {missing}")
        fields.update({BLOCK_PREFIX + k: block[k] for k in BLOCK_COUNTS if k in block})
        for name in ("mean_acceptance_length", "draft_acceptance_rate"):
            if name in block:
                fields[BLOCK_PREFIX + name] = block[name]
    errors += completion_tokens(completion, fields)
    return Measurement(fields, errors)


# --- invariants -------------------------------------------------------------------------------


def per_pos(ctx: Context) -> list[str]:
    """Per-position accepted counts: K positions, never increasing, summing to num_accepted."""
    f = ctx.fields
    if need(ctx, "accepted_tokens_per_pos", "num_accepted_tokens"):
        return []
    pos = f["accepted_tokens_per_pos"]
    out = []
    if ctx.k is not None and pos and len(pos) != ctx.k:
        out.append(f"len(accepted_tokens_per_pos) = {len(pos)}, expected K = {ctx.k}")
    if any(pos[i + 1] > pos[i] for i in range(len(pos) - 1)):
        out.append(f"accepted_tokens_per_pos increases: {pos}")
    if pos and sum(pos) != f["num_accepted_tokens"]:
        out.append(
            f"sum(accepted_tokens_per_pos) = {sum(pos)} != num_accepted_tokens = "
            f"{f['num_accepted_tokens']}"
        )
    return out


def counts(ctx: Context) -> list[str]:
    """accepted <= draft tokens <= drafts*K; accepted < completion tokens; no negative deltas."""
    f = ctx.fields
    if need(ctx, "num_drafts", "num_draft_tokens", "num_accepted_tokens"):
        return []
    out = []
    if min(f["num_drafts"], f["num_draft_tokens"], f["num_accepted_tokens"]) < 0:
        out.append("a counter went backwards during the request (server restarted?)")
    if f["num_accepted_tokens"] > f["num_draft_tokens"]:
        out.append(
            f"num_accepted_tokens = {f['num_accepted_tokens']} > num_draft_tokens = "
            f"{f['num_draft_tokens']}"
        )
    if ctx.k is not None and f["num_draft_tokens"] > f["num_drafts"] * ctx.k:
        out.append(
            f"num_draft_tokens = {f['num_draft_tokens']} > num_drafts*K = {f['num_drafts'] * ctx.k}"
        )
    tokens = f.get("completion_tokens")
    if tokens is not None and tokens > 0 and f["num_accepted_tokens"] >= tokens:
        out.append(
            f"num_accepted_tokens = {f['num_accepted_tokens']} >= completion_tokens = "
            f"{tokens} (another request ran at the same time?)"
        )
    return out


def per_request_block_check(ctx: Context) -> list[str]:
    """The response's metrics.speculative_decoding equals the counter deltas, its histogram
    agrees with its counts, and its two ratios follow from them."""
    f = ctx.fields
    p = BLOCK_PREFIX
    if need(ctx, p + "num_spec_steps"):
        return []
    out = []
    pairs = [
        ("num_spec_steps", "num_drafts"),
        ("num_draft_tokens", "num_draft_tokens"),
        ("num_accepted_draft_tokens", "num_accepted_tokens"),
    ]
    for block_name, counter_name in pairs:
        if p + block_name in f and counter_name in f and f[p + block_name] != f[counter_name]:
            out.append(
                f"metrics.speculative_decoding.{block_name} = {f[p + block_name]} but the "
                f"counters moved {counter_name} by {f[counter_name]}"
            )
    hist = f.get(p + "acceptance_histogram")
    if isinstance(hist, list):
        steps = f[p + "num_spec_steps"]
        accepted = f.get(p + "num_accepted_draft_tokens")
        if sum(hist) != steps:
            out.append(f"sum(acceptance_histogram) = {sum(hist)} != num_spec_steps = {steps}")
        weighted = sum(j * n for j, n in enumerate(hist))
        if accepted is not None and weighted != accepted:
            out.append(
                f"sum(j * acceptance_histogram[j]) = {weighted} != num_accepted_draft_tokens "
                f"= {accepted}"
            )
        if "accepted_tokens_per_pos" in f and len(hist) > 1:
            from_hist = [sum(hist[i + 1 :]) for i in range(len(hist) - 1)]
            if from_hist != f["accepted_tokens_per_pos"]:
                out.append(
                    f"per-position counts from acceptance_histogram {from_hist} != "
                    f"accepted_tokens_per_pos {f['accepted_tokens_per_pos']}"
                )
    steps, proposed = f[p + "num_spec_steps"], f.get(p + "num_draft_tokens")
    accepted = f.get(p + "num_accepted_draft_tokens")
    if accepted is not None:
        mean = f.get(p + "mean_acceptance_length")
        if mean is not None and steps and abs(mean - (1 + accepted / steps)) > DERIVED_ABS_TOL:
            out.append(f"mean_acceptance_length = {mean:.6g} != 1 + accepted/steps")
        rate = f.get(p + "draft_acceptance_rate")
        if rate is not None and proposed and abs(rate - accepted / proposed) > DERIVED_ABS_TOL:
            out.append(f"draft_acceptance_rate = {rate:.6g} != accepted/draft tokens")
    return out


class VllmAdapter(Adapter):
    name = "vllm"
    sequential = True
    invariants: ClassVar[dict[str, Check]] = {
        "per_pos": per_pos,
        "counts": counts,
        "per_request_block": per_request_block_check,
        "metrics_placement": metrics_placement,
        "within_max_tokens": within_max_tokens,
        "acceptance_record": acceptance_record,
    }

    def prepare(self, endpoint: Endpoint) -> SpecCounters:
        return settled_counters(endpoint.metrics_url)

    def measure(self, completion: Completion, endpoint: Endpoint, before: Any) -> Measurement:
        return vllm_measure(completion, before, settled_counters(endpoint.metrics_url))

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        pos = fields.get("accepted_tokens_per_pos")
        return AcceptanceRecord(
            num_drafts=int_or_none(fields.get("num_drafts")),
            num_draft_tokens=int_or_none(fields.get("num_draft_tokens")),
            num_accepted_tokens=int_or_none(fields.get("num_accepted_tokens")),
            accepted_per_position=tuple(round(v) for v in pos) if isinstance(pos, list) else None,
        )


ADAPTER = VllmAdapter()
