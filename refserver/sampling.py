"""Verification of a draft against the target's logits: greedy and speculative sampling.

Every draft token here is a point mass: n-gram drafts are copies, and MTP drafts are the head's
argmax. Speculative sampling with a point-mass proposal q = onehot(d) reduces to: accept d with
probability p(d); on rejection, sample from p with d removed and renormalised. That is exactly
the target distribution p, so sampling stays lossless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        # top_p == 0 keeps only the top token, so it is greedy too (FastDeploy's e2e uses it).
        return self.temperature < GREEDY_TEMPERATURE or self.top_p <= 0.0


def target_probs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """Probabilities [T, V] after temperature and nucleus (top-p) filtering, in float32."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p, and always the top token: a top_p that
    # rounds to 0 in float32 would otherwise keep nothing (and sampling would divide 0 by 0).
    keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = probs * keep
    return probs / probs.sum(-1, keepdim=True)


def verify_greedy(argmax: Sequence[int], drafts: Sequence[int]) -> tuple[int, list[int]]:
    """argmax[j] is the target's choice after input j (input 0 = last token, j>0 = draft j).

    Returns (number of accepted drafts a, emitted tokens = drafts[:a] + [argmax[a]]).
    """
    a = 0
    while a < len(drafts) and drafts[a] == argmax[a]:
        a += 1
    return a, [*drafts[:a], argmax[a]]


def verify_sampling(
    probs: Tensor, drafts: Sequence[int], generator: torch.Generator
) -> tuple[int, list[int]]:
    """Speculative sampling with point-mass drafts. probs [len(drafts)+1, V] on CPU."""
    for j, d in enumerate(drafts):
        p = probs[j]
        u = torch.rand((), generator=generator).item()
        if u < p[d].item():
            continue
        residual = p.clone()
        residual[d] = 0.0
        token = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
        return j, [*drafts[:j], token]
    token = int(torch.multinomial(probs[len(drafts)], 1, generator=generator))
    return len(drafts), [*drafts, token]
