"""FastDeploy: `speculate_metrics` in the response (SPEC §2), also what refserver reports.

Placement: `choices[0]` of a non-streaming body; in a stream, the last chunk that carries choices
(null on earlier chunks). `usage.completion_tokens` must equal `accepted_tokens`.

Conversion to the common record (SPEC §2.1). Every step counts in `accepted_tokens_per_head[0]`,
including the step that emits the first token after prefill (accept_num = 1, no draft), and each
step's count includes the target's own token. So:
  num_accepted_tokens      = accepted_tokens - steps            (exact while every step emits)
  accepted_per_position[i] = accepted_tokens_per_head[i + 1]    (exact)
  num_drafts               = steps - 1                           (upper bound: steps that found
                                                                  no draft still count)
  num_draft_tokens         = (steps - 1) * K                     (upper bound: FastDeploy charges
                                                                  K draft slots to every step)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from e2e.adapters._base import (
    AcceptanceRecord,
    Adapter,
    AdapterError,
    Measurement,
    completion_tokens,
    int_or_none,
    is_metric_value,
)
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

SPECULATE_FIELDS = (
    "accepted_tokens",
    "rejected_tokens",
    "accept_ratio",
    "average_accept_length",
    "accepted_tokens_per_head",
    "accept_ratio_per_head",
)


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
    fields = {k: v for k, v in metrics.items() if is_metric_value(v)}
    missing = [k for k in SPECULATE_FIELDS if k not in fields]
    if missing:
        errors.append(f"speculate_metrics lacks fields {missing}")
    errors += completion_tokens(completion, fields)
    return Measurement(fields, errors)


def fastdeploy_record(fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
    heads = fields.get("accepted_tokens_per_head")
    accepted = int_or_none(fields.get("accepted_tokens"))
    if not isinstance(heads, list) or not heads or accepted is None:
        return AcceptanceRecord(None, None, None)
    steps = round(heads[0])
    width = k if k is not None else len(heads) - 1
    drafts = max(steps - 1, 0)
    return AcceptanceRecord(
        num_drafts=drafts,
        num_draft_tokens=drafts * width,
        num_accepted_tokens=accepted - steps,
        accepted_per_position=tuple(round(h) for h in heads[1:]),
        upper_bounds=frozenset({"num_drafts", "num_draft_tokens"}),
    )


# --- invariants: SPEC §2's three, then consistency of the derived fields ---------------------


def per_head_length(ctx: Context) -> list[str]:
    """len(accepted_tokens_per_head) == K + 1 (SPEC §2)."""
    if need(ctx, "accepted_tokens_per_head") or ctx.k is None:
        return []
    n = len(ctx.fields["accepted_tokens_per_head"])
    return (
        []
        if n == ctx.k + 1
        else [f"len(accepted_tokens_per_head) = {n}, expected K+1 = {ctx.k + 1}"]
    )


def per_head_non_increasing(ctx: Context) -> list[str]:
    """The per-head counts never increase (SPEC §2)."""
    if need(ctx, "accepted_tokens_per_head"):
        return []
    heads = ctx.fields["accepted_tokens_per_head"]
    bad = [i for i in range(len(heads) - 1) if heads[i + 1] > heads[i]]
    return [f"accepted_tokens_per_head increases at head {i + 1}: {heads}" for i in bad[:1]]


def accepted_consistent(ctx: Context) -> list[str]:
    """accepted_tokens == sum(accepted_tokens_per_head) == usage.completion_tokens (SPEC §2)."""
    f = ctx.fields
    out = []
    if not need(ctx, "accepted_tokens", "accepted_tokens_per_head"):
        total = sum(f["accepted_tokens_per_head"])
        if f["accepted_tokens"] != total:
            out.append(
                f"accepted_tokens = {f['accepted_tokens']} != sum(accepted_tokens_per_head) "
                f"= {total}"
            )
    if not need(ctx, "accepted_tokens", "completion_tokens") and (
        f["accepted_tokens"] != f["completion_tokens"]
    ):
        out.append(
            f"accepted_tokens = {f['accepted_tokens']} != usage.completion_tokens = "
            f"{f['completion_tokens']}"
        )
    return out


def rejected_consistent(ctx: Context) -> list[str]:
    """rejected_tokens == steps * (K+1) - accepted_tokens, steps = accepted_tokens_per_head[0]."""
    if need(ctx, "rejected_tokens", "accepted_tokens", "accepted_tokens_per_head"):
        return []
    heads = ctx.fields["accepted_tokens_per_head"]
    if not heads:
        return []
    k = ctx.k if ctx.k is not None else len(heads) - 1
    expected = heads[0] * (k + 1) - ctx.fields["accepted_tokens"]
    got = ctx.fields["rejected_tokens"]
    return (
        []
        if got == expected
        else [
            f"rejected_tokens = {got}, expected steps*(K+1) - accepted = {heads[0]}*{k + 1} - "
            f"{ctx.fields['accepted_tokens']} = {expected}"
        ]
    )


def ratios_consistent(ctx: Context) -> list[str]:
    """accept_ratio, average_accept_length and accept_ratio_per_head follow from the counts."""
    f = ctx.fields
    if need(ctx, "accepted_tokens", "accepted_tokens_per_head"):
        return []
    heads, accepted = f["accepted_tokens_per_head"], f["accepted_tokens"]
    steps = heads[0] if heads else 0
    out = []

    def check(name: str, got: float, expected: float) -> None:
        if abs(got - expected) > DERIVED_ABS_TOL:
            out.append(f"{name} = {got:.6g}, expected {expected:.6g} from the counts")

    if "accept_ratio" in f:
        check("accept_ratio", f["accept_ratio"], 1 - steps / accepted if accepted else 0.0)
    if "average_accept_length" in f and steps:
        check("average_accept_length", f["average_accept_length"], accepted / steps)
    if "accept_ratio_per_head" in f:
        ratios = f["accept_ratio_per_head"]
        if len(ratios) != len(heads) - 1:
            out.append(
                f"len(accept_ratio_per_head) = {len(ratios)}, expected "
                f"len(accepted_tokens_per_head) - 1 = {len(heads) - 1}"
            )
        else:
            for i, got in enumerate(ratios):
                check(
                    f"accept_ratio_per_head[{i}]", got, heads[i + 1] / heads[i] if heads[i] else 0.0
                )
    return out


class FastDeployAdapter(Adapter):
    name = "fastdeploy"
    invariants: ClassVar[dict[str, Check]] = {
        "per_head_length": per_head_length,
        "per_head_non_increasing": per_head_non_increasing,
        "accepted_consistent": accepted_consistent,
        "rejected_consistent": rejected_consistent,
        "ratios_consistent": ratios_consistent,
        "metrics_placement": metrics_placement,
        "within_max_tokens": within_max_tokens,
        "acceptance_record": acceptance_record,
    }

    def measure(self, completion: Completion, endpoint: Any, before: Any) -> Measurement:
        return fastdeploy_measure(completion)

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        return fastdeploy_record(fields, k)


ADAPTER = FastDeployAdapter()
