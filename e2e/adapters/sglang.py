"""SGLang: `meta_info` of the native /generate response (also `choices[0].meta_info`).

Fields read (current SGLang): `spec_verify_ct` (verification steps), `spec_num_correct_drafts`
(draft tokens accepted, the bonus token not counted), `spec_num_proposed_drafts` (draft tokens
proposed), `spec_accept_rate` (= correct / proposed), `spec_accept_length` (= completion_tokens /
spec_verify_ct: the bonus token and the prefill token included), `spec_correct_drafts_histogram`
(index j: steps that accepted exactly j drafts), and `completion_tokens`. Releases before the
rename report `spec_accepted_drafts`, `spec_proposed_drafts` and `spec_accept_histogram`
(current ones send both); those are read too.

Conversion to the common record (SPEC §2.1):
  num_drafts               = spec_verify_ct
  num_draft_tokens         = spec_num_proposed_drafts
  num_accepted_tokens      = spec_num_correct_drafts
  accepted_per_position[i] = sum(spec_correct_drafts_histogram[i + 1:])
so mean_acceptance_length = 1 + correct / verify_ct, which is not spec_accept_length: SGLang
divides all completion tokens, the one from prefill included, by the verification steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from e2e.adapters._base import (
    AcceptanceRecord,
    Adapter,
    AdapterError,
    Measurement,
    int_or_none,
    is_metric_value,
)
from e2e.client import Completion
from e2e.invariants import (
    DERIVED_ABS_TOL,
    Check,
    Context,
    acceptance_record,
    need,
    within_max_tokens,
)

SGLANG_FIELDS = (
    "completion_tokens",
    "spec_verify_ct",
    "spec_accept_length",
    "spec_accept_rate",
    "spec_num_correct_drafts",
    "spec_num_proposed_drafts",
    "spec_correct_drafts_histogram",
)
# Names before SGLang's rename, current name -> old name.
ALIASES = {
    "spec_num_correct_drafts": "spec_accepted_drafts",
    "spec_num_proposed_drafts": "spec_proposed_drafts",
    "spec_correct_drafts_histogram": "spec_accept_histogram",
}


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
    fields = {}
    for name in SGLANG_FIELDS:
        for key in (name, ALIASES.get(name)):
            if key in meta and is_metric_value(meta[key]):
                fields[key] = meta[key]
                break
    verify = fields["spec_verify_ct"]
    tokens = fields.get("completion_tokens", 0)
    fields["average_accept_length"] = tokens / verify if verify else 0.0
    return Measurement(fields, [])


def _get(fields: Mapping[str, Any], name: str) -> Any:
    return fields.get(name, fields.get(ALIASES.get(name, ""), None))


def sglang_record(fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
    hist = _get(fields, "spec_correct_drafts_histogram")
    per_position = None
    if isinstance(hist, list) and hist:
        per_position = tuple(round(sum(hist[i + 1 :])) for i in range(len(hist) - 1))
    return AcceptanceRecord(
        num_drafts=int_or_none(fields.get("spec_verify_ct")),
        num_draft_tokens=int_or_none(_get(fields, "spec_num_proposed_drafts")),
        num_accepted_tokens=int_or_none(_get(fields, "spec_num_correct_drafts")),
        accepted_per_position=per_position,
    )


# --- invariants -------------------------------------------------------------------------------


def verify_count(ctx: Context) -> list[str]:
    """1 <= completion_tokens / spec_verify_ct <= K + 1."""
    f = ctx.fields
    if need(ctx, "spec_verify_ct", "completion_tokens") or not f["completion_tokens"]:
        return []
    verify, tokens = f["spec_verify_ct"], f["completion_tokens"]
    if verify <= 0:
        return [f"spec_verify_ct = {verify} for {tokens} completion tokens"]
    out = []
    if verify > tokens:
        out.append(f"spec_verify_ct = {verify} > completion_tokens = {tokens}")
    if ctx.k is not None and tokens > verify * (ctx.k + 1):
        out.append(f"completion_tokens = {tokens} > spec_verify_ct*(K+1) = {verify * (ctx.k + 1)}")
    return out


def drafts_consistent(ctx: Context) -> list[str]:
    """The draft counts agree with each other: the histogram covers every verification step and
    sums to the correct drafts; spec_accept_rate and spec_accept_length follow from the counts."""
    f = ctx.fields
    out = []
    verify = f.get("spec_verify_ct")
    correct = _get(f, "spec_num_correct_drafts")
    proposed = _get(f, "spec_num_proposed_drafts")
    hist = _get(f, "spec_correct_drafts_histogram")
    if isinstance(hist, list) and hist and verify is not None:
        if sum(hist) != verify:
            out.append(
                f"sum(spec_correct_drafts_histogram) = {sum(hist)} != spec_verify_ct = {verify}"
            )
        weighted = sum(j * n for j, n in enumerate(hist))
        if correct is not None and weighted != correct:
            out.append(
                f"sum(j * spec_correct_drafts_histogram[j]) = {weighted} != "
                f"spec_num_correct_drafts = {correct}"
            )
    rate = f.get("spec_accept_rate")
    if rate is not None and correct is not None and proposed:  # noqa: SIM102 - reads better
        if abs(rate - correct / proposed) > DERIVED_ABS_TOL:
            out.append(
                f"spec_accept_rate = {rate:.6g}, expected correct/proposed = "
                f"{correct / proposed:.6g}"
            )
    length, tokens = f.get("spec_accept_length"), f.get("completion_tokens")
    if length is not None and tokens is not None and verify:  # noqa: SIM102
        if abs(length - tokens / verify) > DERIVED_ABS_TOL:
            out.append(
                f"spec_accept_length = {length:.6g}, expected completion_tokens/spec_verify_ct = "
                f"{tokens / verify:.6g}"
            )
    return out


class SglangAdapter(Adapter):
    name = "sglang"
    invariants: ClassVar[dict[str, Check]] = {
        "verify_count": verify_count,
        "drafts_consistent": drafts_consistent,
        "within_max_tokens": within_max_tokens,
        "acceptance_record": acceptance_record,
    }

    def measure(self, completion: Completion, endpoint: Any, before: Any) -> Measurement:
        return sglang_measure(completion)

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        return sglang_record(fields, k)


ADAPTER = SglangAdapter()
