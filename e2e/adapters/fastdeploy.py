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


# --- FastDeploy's own e2e test's structural checks (SPEC §3) ----------------------------------
# tests/e2e/test_ernie_21b_mtp_ngram.py upstream asserts these on the raw response; each holds
# trivially when the response lacks what it reads (other checks report what is missing).


def text_not_empty(ctx: Context) -> list[str]:
    """The generated text is not empty."""
    c = ctx.completion
    return [] if c is None or c.text else ["the generated text is empty"]


def usage_consistent(ctx: Context) -> list[str]:
    """usage.total_tokens == prompt_tokens + completion_tokens >= ...; completion >= min_tokens."""
    c = ctx.completion
    if c is None or not isinstance(c.usage, dict):
        return []
    usage, out = c.usage, []
    if all(isinstance(usage.get(k), int) for k in ("prompt_tokens", "completion_tokens")):
        total = usage["prompt_tokens"] + usage["completion_tokens"]
        if "total_tokens" in usage and usage["total_tokens"] != total:
            out.append(
                f"usage.total_tokens = {usage['total_tokens']} != prompt_tokens + "
                f"completion_tokens = {total}"
            )
    min_tokens = c.request.body.get("min_tokens")
    got = usage.get("completion_tokens")
    if isinstance(min_tokens, int) and isinstance(got, int) and got < min_tokens:
        out.append(f"usage.completion_tokens = {got} < min_tokens = {min_tokens}")
    return out


def metrics_before_usage(ctx: Context) -> list[str]:
    """Streaming with include_usage: the last chunk is the usage chunk, and the one before it
    (`chunks[-2]`, where FastDeploy's test reads them) carries speculate_metrics."""
    c = ctx.completion
    if c is None or not c.request.stream or c.body is not None:
        return []
    if not (c.request.body.get("stream_options") or {}).get("include_usage"):
        return []
    chunks = c.chunks
    if not chunks or chunks[-1].get("choices") or not chunks[-1].get("usage"):
        return ["the last chunk is not a usage-only chunk (choices [] with usage)"]
    before = chunks[-2] if len(chunks) >= 2 else {}
    choices = before.get("choices") or [{}]
    if choices[0].get("speculate_metrics") is None:
        return ["the chunk before the usage chunk (chunks[-2]) carries no speculate_metrics"]
    return []


def speculate_keys_exact(ctx: Context) -> list[str]:
    """speculate_metrics holds exactly FastDeploy's six keys, no more and no fewer."""
    metrics = _raw_speculate_metrics(ctx.completion)
    if not isinstance(metrics, dict):
        return []
    missing = [k for k in SPECULATE_FIELDS if k not in metrics]
    extra = sorted(set(metrics) - set(SPECULATE_FIELDS))
    if not missing and not extra:
        return []
    return [f"speculate_metrics keys: missing {missing}, extra {extra}"]


def logprobs_shape(ctx: Context) -> list[str]:
    """A chat request with logprobs gets entries with token, logprob and at most top_logprobs
    alternatives (in every chunk that carries logprobs, when streaming)."""
    c = ctx.completion
    if c is None or c.request.endpoint != "chat" or not c.request.body.get("logprobs"):
        return []
    top_n = c.request.body.get("top_logprobs") or 0
    if c.body is not None:
        blocks = [(c.body.get("choices") or [{}])[0].get("logprobs")]
    else:
        blocks = [
            ch["choices"][0].get("logprobs")
            for ch in c.chunks
            if ch.get("choices") and ch["choices"][0].get("logprobs") is not None
        ]
    blocks = [b for b in blocks if b is not None]
    if not blocks:
        return ["logprobs were asked for and none came back"]
    for b in blocks:
        if not isinstance(b, dict) or "content" not in b:
            return [f"a logprobs block has no 'content': {str(b)[:80]}"]
        for item in b["content"] or []:
            lacking = [k for k in ("token", "logprob", "top_logprobs") if k not in item]
            if lacking:
                return [f"a logprobs entry lacks {lacking}: {str(item)[:80]}"]
            if len(item["top_logprobs"]) > top_n:
                return [
                    f"a logprobs entry has {len(item['top_logprobs'])} top_logprobs, more than "
                    f"the {top_n} asked for"
                ]
    return []


def _raw_speculate_metrics(c: Any) -> Any:
    """speculate_metrics as sent: choices[0] of the body, or the last stream chunk carrying it."""
    if c is None:
        return None
    if c.body is not None:
        return (c.body.get("choices") or [{}])[0].get("speculate_metrics")
    for chunk in reversed(c.chunks):
        choices = chunk.get("choices") or [{}]
        if choices[0].get("speculate_metrics") is not None:
            return choices[0]["speculate_metrics"]
    return None


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
        "text_not_empty": text_not_empty,
        "usage_consistent": usage_consistent,
        "metrics_before_usage": metrics_before_usage,
        "speculate_keys_exact": speculate_keys_exact,
        "logprobs_shape": logprobs_shape,
    }

    def measure(self, completion: Completion, endpoint: Any, before: Any) -> Measurement:
        return fastdeploy_measure(completion)

    def record(self, fields: Mapping[str, Any], k: int | None) -> AcceptanceRecord:
        return fastdeploy_record(fields, k)


ADAPTER = FastDeployAdapter()
