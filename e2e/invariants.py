"""Invariant checks on one request's metrics: facts that hold for every response, whatever the
baseline says (SPEC §2). They run before the baseline comparison and also guard `baseline update`:
a baseline is only written when every invariant holds.

Each check takes a Context and returns a list of violation messages (empty when it holds). K is
`num_speculative_tokens` when the scenario knows it (from `speculative_tokens` or the server's
`--speculative-config`); checks that need K and do not have it derive it from the lists' lengths.
The engine-specific checks live with their adapter (e2e/adapters/<engine>.py); this module holds
the Context, the checks every engine shares, and the lookup by adapter name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2e.adapters import AcceptanceRecord

# Servers print floats rounded or as float32; consistency checks of derived ratios allow this.
DERIVED_ABS_TOL = 5e-4


@dataclass(frozen=True)
class Context:
    fields: dict[str, Any]
    k: int | None
    max_tokens: int | None
    placement_errors: tuple[str, ...] = ()
    record: AcceptanceRecord | None = None  # the fields as the common record (SPEC §2.1)
    # The raw response (e2e.client.Completion) for the checks that read its shape; None skips them.
    completion: Any = None


Check = Callable[[Context], list[str]]


def need(ctx: Context, *names: str) -> list[str]:
    """The names among `names` that the fields lack (a check without its inputs does not apply)."""
    return [n for n in names if n not in ctx.fields]


def metrics_placement(ctx: Context) -> list[str]:
    """Metrics appear where the adapter's engine documents them (SPEC §2 for fastdeploy)."""
    return list(ctx.placement_errors)


def within_max_tokens(ctx: Context) -> list[str]:
    """usage.completion_tokens <= the request's max_tokens."""
    got = ctx.fields.get("completion_tokens")
    if got is None or ctx.max_tokens is None:
        return []
    return (
        []
        if got <= ctx.max_tokens
        else [f"completion_tokens = {got} > max_tokens = {ctx.max_tokens}"]
    )


def acceptance_record(ctx: Context) -> list[str]:
    """The common record (SPEC §2.1) is consistent: no negative counts, no more accepted than
    proposed, per-position counts that never increase and sum to the accepted count; with K
    known, at most K positions and at most K draft tokens per draft."""
    record = ctx.record
    if record is None:
        return []
    out = record.problems()
    pos = record.accepted_per_position
    if ctx.k is not None and pos is not None and len(pos) > ctx.k:
        out.append(f"{len(pos)} accepted positions, more than K = {ctx.k}")
    drafts, proposed = record.num_drafts, record.num_draft_tokens
    if (
        ctx.k is not None
        and drafts is not None
        and proposed is not None
        and proposed > drafts * ctx.k
    ):
        out.append(f"num_draft_tokens = {proposed} > num_drafts*K = {drafts * ctx.k}")
    return out


def _adapter_checks(adapter: str) -> dict[str, Check]:
    from e2e.adapters import get_adapter

    return dict(get_adapter(adapter).invariants)


def invariant_names(adapter: str) -> set[str]:
    return set(_adapter_checks(adapter))


def check_invariants(
    adapter: str, ctx: Context, selected: tuple[str, ...] | None = None
) -> list[str]:
    """Every violated invariant as 'name: message'; `selected` None means all of the adapter's."""
    out = []
    for name, check in _adapter_checks(adapter).items():
        if selected is None or name in selected:
            out.extend(f"{name}: {message}" for message in check(ctx))
    return out
