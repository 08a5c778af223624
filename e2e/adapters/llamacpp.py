"""llama.cpp server: `timings.draft_n` and `timings.draft_n_accepted` of the response.

`timings` is a top-level object of the final response: the body of a non-streaming request (OpenAI
or native /completion), or in a stream the last chunk that carries it (the usage chunk of an
OpenAI stream). llama.cpp omits both draft fields when no draft token was proposed, so a
`timings` object without them means zero drafts.

Conversion to the common record (SPEC §2.1): num_draft_tokens = draft_n, num_accepted_tokens =
draft_n_accepted. llama.cpp reports neither the number of verification steps nor positions, so
num_drafts, accepted_per_position and mean_acceptance_length stay unknown.
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
)
from e2e.client import Completion
from e2e.invariants import Check, Context, acceptance_record, need, within_max_tokens


def timings(completion: Completion) -> dict[str, Any]:
    sources = [completion.body] if completion.body is not None else completion.chunks
    for source in reversed(sources):
        if isinstance(source, dict) and isinstance(source.get("timings"), dict):
            return source["timings"]
    where = "the body" if completion.body is not None else "any stream chunk"
    raise AdapterError(f"request {completion.request.id!r}: no timings object in {where}")


def llamacpp_measure(completion: Completion) -> Measurement:
    found = timings(completion)
    fields: dict[str, Any] = {
        "draft_n": found.get("draft_n", 0),
        "draft_n_accepted": found.get("draft_n_accepted", 0),
    }
    if "predicted_n" in found:
        fields["predicted_n"] = found["predicted_n"]
    errors = completion_tokens(completion, fields)
    return Measurement(fields, errors)


def drafts(ctx: Context) -> list[str]:
    """0 <= draft_n_accepted <= draft_n, and accepted drafts are fewer than the tokens emitted
    (the first token never is a draft)."""
    if need(ctx, "draft_n", "draft_n_accepted"):
        return []
    proposed, accepted = ctx.fields["draft_n"], ctx.fields["draft_n_accepted"]
    out = []
    if accepted < 0 or proposed < 0:
        out.append(f"negative draft counts: draft_n = {proposed}, draft_n_accepted = {accepted}")
    if accepted > proposed:
        out.append(f"draft_n_accepted = {accepted} > draft_n = {proposed}")
    tokens = ctx.fields.get("completion_tokens")
    if tokens and accepted >= tokens:
        out.append(f"draft_n_accepted = {accepted} >= completion_tokens = {tokens}")
    return out


class LlamaCppAdapter(Adapter):
    name = "llamacpp"
    invariants: ClassVar[dict[str, Check]] = {
        "drafts": drafts,
        "within_max_tokens": within_max_tokens,
        "acceptance_record": acceptance_record,
    }

    def measure(self, completion: Completion, endpoint: Any, before: Any) -> Measurement:
        return llamacpp_measure(completion)

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        return AcceptanceRecord(
            num_drafts=None,
            num_draft_tokens=int_or_none(fields.get("draft_n")),
            num_accepted_tokens=int_or_none(fields.get("draft_n_accepted")),
        )


ADAPTER = LlamaCppAdapter()
