"""Lossless check: greedy text with speculation must equal greedy text without it.

Speculation verifies several positions in one forward pass, so its logits differ from plain
decoding in the last bits. Where the top two tokens are (nearly) tied, that may flip the argmax
and the texts legitimately part ways. The allowance is narrow and evidence-based: at the first
differing token, the *reference* server's top_logprobs must show that the two chosen tokens are
its top-2 and that their logprobs differ by at most `max_gap` (default 1e-3). A logprob gap is
exactly the logit gap (log-softmax subtracts one constant from every logit), so this is the
"top-2 logit gap" of the server. After an allowed divergence the continuations are not compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from e2e.client import Completion, TokenLogprob
from e2e.scenario import RequestSpec


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str


def greedy_with_logprobs(request: RequestSpec) -> RequestSpec:
    """The request as both servers receive it: greedy, and with the top-2 logprobs we need."""
    body = dict(request.body)
    body["temperature"] = 0
    if request.endpoint == "completion":
        body["logprobs"] = max(int(body.get("logprobs") or 0), 2)
    else:
        body["logprobs"] = True
        body["top_logprobs"] = max(int(body.get("top_logprobs") or 0), 2)
    return RequestSpec(request.id, request.endpoint, body)


def _top2(position: TokenLogprob) -> list[tuple[str, float]]:
    return sorted(position.top, key=lambda item: -item[1])[:2]


def judge(reference: Completion, candidate: Completion, max_gap: float) -> Verdict:
    if reference.text == candidate.text:
        return Verdict(True, f"identical ({len(reference.tokens) or '?'} tokens)")
    ref_tokens = [t.token for t in reference.tokens]
    cand_tokens = [t.token for t in candidate.tokens]
    if not ref_tokens or not cand_tokens:
        return Verdict(False, "texts differ, and without logprobs no near-tie can be shown")
    i = next(
        (j for j, (a, b) in enumerate(zip(ref_tokens, cand_tokens, strict=False)) if a != b), None
    )
    if i is None:
        shorter = "candidate" if len(cand_tokens) < len(ref_tokens) else "reference"
        return Verdict(
            False,
            f"the {shorter} stops after {min(len(ref_tokens), len(cand_tokens))} "
            f"tokens where the other goes on (texts differ)",
        )
    ref_tok, cand_tok = ref_tokens[i], cand_tokens[i]
    where = f"token {i}: reference {ref_tok!r} vs candidate {cand_tok!r}"
    top2 = _top2(reference.tokens[i])
    if {tok for tok, _ in top2} != {ref_tok, cand_tok}:
        return Verdict(
            False,
            f"diverged at {where}; reference top-2 there is {top2}, so this is not a near-tie",
        )
    gap = abs(top2[0][1] - top2[1][1])
    cand_top2 = _top2(candidate.tokens[i]) if i < len(candidate.tokens) else []
    cand_gap = (
        f"; candidate's own top-2 gap {abs(cand_top2[0][1] - cand_top2[1][1]):.2e}"
        if len(cand_top2) == 2
        else ""
    )
    if gap <= max_gap:
        return Verdict(
            True,
            f"near-tie at {where}; reference top-2 logprob gap {gap:.2e} <= {max_gap:g}{cand_gap}",
        )
    return Verdict(
        False, f"diverged at {where}; reference top-2 logprob gap {gap:.2e} > {max_gap:g}{cand_gap}"
    )
