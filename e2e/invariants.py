"""Invariant checks on one request's metrics: facts that hold for every response, whatever the
baseline says (SPEC §2). They run before the baseline comparison and also guard `baseline update`:
a baseline is only written when every invariant holds.

Each check takes a Context and returns a list of violation messages (empty when it holds). K is
`num_speculative_tokens` when the scenario knows it (from `speculative_tokens` or the server's
`--speculative-config`); checks that need K and do not have it derive it from the lists' lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e.adapters import SPECULATE_FIELDS

# Servers print floats rounded or as float32; consistency checks of derived ratios allow this.
DERIVED_ABS_TOL = 5e-4


@dataclass(frozen=True)
class Context:
    fields: dict[str, Any]
    k: int | None
    max_tokens: int | None
    placement_errors: tuple[str, ...] = ()
    # The raw response (e2e.client.Completion) for the checks that read its shape; None skips them.
    completion: Any = None


Check = Callable[[Context], list[str]]


def _need(ctx: Context, *names: str) -> list[str]:
    return [n for n in names if n not in ctx.fields]


# --- fastdeploy: SPEC §2's three, then consistency of the derived fields --------------------


def per_head_length(ctx: Context) -> list[str]:
    """len(accepted_tokens_per_head) == K + 1 (SPEC §2)."""
    if _need(ctx, "accepted_tokens_per_head") or ctx.k is None:
        return []
    n = len(ctx.fields["accepted_tokens_per_head"])
    return (
        []
        if n == ctx.k + 1
        else [f"len(accepted_tokens_per_head) = {n}, expected K+1 = {ctx.k + 1}"]
    )


def per_head_non_increasing(ctx: Context) -> list[str]:
    """The per-head counts never increase (SPEC §2)."""
    if _need(ctx, "accepted_tokens_per_head"):
        return []
    heads = ctx.fields["accepted_tokens_per_head"]
    bad = [i for i in range(len(heads) - 1) if heads[i + 1] > heads[i]]
    return [f"accepted_tokens_per_head increases at head {i + 1}: {heads}" for i in bad[:1]]


def accepted_consistent(ctx: Context) -> list[str]:
    """accepted_tokens == sum(accepted_tokens_per_head) == usage.completion_tokens (SPEC §2)."""
    f = ctx.fields
    out = []
    if not _need(ctx, "accepted_tokens", "accepted_tokens_per_head"):
        total = sum(f["accepted_tokens_per_head"])
        if f["accepted_tokens"] != total:
            out.append(
                f"accepted_tokens = {f['accepted_tokens']} != sum(accepted_tokens_per_head) "
                f"= {total}"
            )
    if not _need(ctx, "accepted_tokens", "completion_tokens") and (
        f["accepted_tokens"] != f["completion_tokens"]
    ):
        out.append(
            f"accepted_tokens = {f['accepted_tokens']} != usage.completion_tokens = "
            f"{f['completion_tokens']}"
        )
    return out


def rejected_consistent(ctx: Context) -> list[str]:
    """rejected_tokens == steps * (K+1) - accepted_tokens, steps = accepted_tokens_per_head[0]."""
    if _need(ctx, "rejected_tokens", "accepted_tokens", "accepted_tokens_per_head"):
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
    if _need(ctx, "accepted_tokens", "accepted_tokens_per_head"):
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


# --- fastdeploy: the structural checks of FastDeploy's own e2e test (SPEC §3) ---------------
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


# --- vllm -------------------------------------------------------------------------------------


def vllm_per_pos(ctx: Context) -> list[str]:
    """Per-position accepted counts: K positions, never increasing, summing to num_accepted."""
    f = ctx.fields
    if _need(ctx, "accepted_tokens_per_pos", "num_accepted_tokens"):
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


def vllm_counts(ctx: Context) -> list[str]:
    """accepted <= draft tokens <= drafts*K; accepted < completion tokens; no negative deltas."""
    f = ctx.fields
    if _need(ctx, "num_drafts", "num_draft_tokens", "num_accepted_tokens"):
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


# --- sglang -----------------------------------------------------------------------------------


def sglang_verify_count(ctx: Context) -> list[str]:
    """1 <= completion_tokens / spec_verify_ct <= K + 1."""
    f = ctx.fields
    if _need(ctx, "spec_verify_ct", "completion_tokens") or not f["completion_tokens"]:
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


INVARIANTS: dict[str, dict[str, Check]] = {
    "fastdeploy": {
        "per_head_length": per_head_length,
        "per_head_non_increasing": per_head_non_increasing,
        "accepted_consistent": accepted_consistent,
        "rejected_consistent": rejected_consistent,
        "ratios_consistent": ratios_consistent,
        "metrics_placement": metrics_placement,
        "within_max_tokens": within_max_tokens,
        "text_not_empty": text_not_empty,
        "usage_consistent": usage_consistent,
        "metrics_before_usage": metrics_before_usage,
        "speculate_keys_exact": speculate_keys_exact,
        "logprobs_shape": logprobs_shape,
    },
    "vllm": {
        "per_pos": vllm_per_pos,
        "counts": vllm_counts,
        "metrics_placement": metrics_placement,
        "within_max_tokens": within_max_tokens,
    },
    "sglang": {
        "verify_count": sglang_verify_count,
        "within_max_tokens": within_max_tokens,
    },
}


def invariant_names(adapter: str) -> set[str]:
    return set(INVARIANTS[adapter])


def check_invariants(
    adapter: str, ctx: Context, selected: tuple[str, ...] | None = None
) -> list[str]:
    """Every violated invariant as 'name: message'; `selected` None means all of the adapter's."""
    out = []
    for name, check in INVARIANTS[adapter].items():
        if selected is None or name in selected:
            out.extend(f"{name}: {message}" for message in check(ctx))
    return out
