"""Draft acceptance of an MTP head on the target's own greedy answers, through the cached API.

For every answer position t of every sample (x_t is the last verified token, x_{t+1} the bonus
token, h_t the target's hidden state at t) the head drafts `steps` tokens with `MTPHead.draft`,
exactly as the engine does, and the drafts are compared with the target's own greedy tokens
x_{t+2}, x_{t+3}, ... The head's cache is kept in sync the engine's way: `fill` over the prompt,
then one `draft` per position (its step 1 writes the verified entry for t).

Reported per draft position k:
- `accept_rate[k]`: P(drafts 1..k all equal the target's tokens): what a verifier accepts;
- `cond_accept_rate[k]`: P(draft k correct | drafts 1..k-1 correct): the chained step's own rate.
Draft 1 has both equal. `mean_accepted` is the expected number of accepted drafts per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtp_train.generate import Sample
from refserver.mtp_head import MTPHead


@dataclass
class Acceptance:
    positions: int
    accept_rate: list[float]
    cond_accept_rate: list[float]
    mean_accepted: float

    def as_dict(self) -> dict:
        return {
            "positions": self.positions,
            "accept_rate": self.accept_rate,
            "cond_accept_rate": self.cond_accept_rate,
            "mean_accepted": self.mean_accepted,
        }


def acceptance(head: MTPHead, samples: list[Sample], steps: int = 3) -> Acceptance:
    """Greedy-draft acceptance over the answer positions of `samples` (greedy target answers)."""
    prefix, live = _counts(head, samples, steps)
    return _summarise(prefix.sum(0).tolist(), int(live.sum()))


def acceptance_by_group(
    head: MTPHead, samples: list[Sample], groups: list[str], steps: int = 3
) -> dict[str, Acceptance]:
    """`acceptance` for all samples ("all") and per group label, from one drafting pass."""
    prefix, live = _counts(head, samples, steps)
    out = {"all": _summarise(prefix.sum(0).tolist(), int(live.sum()))}
    for g in sorted(set(groups)):
        rows = torch.tensor([i for i, x in enumerate(groups) if x == g], device=prefix.device)
        out[g] = _summarise(prefix[rows].sum(0).tolist(), int(live[rows].sum()))
    return out


def _summarise(cp: list[int], total: int) -> Acceptance:
    if total == 0:
        raise ValueError("no answer positions to evaluate (answers shorter than 3 tokens?)")
    accept = [c / total for c in cp]
    steps = len(cp)
    cond = [cp[0] / total] + [cp[k] / cp[k - 1] if cp[k - 1] else 0.0 for k in range(1, steps)]
    return Acceptance(total, accept, cond, sum(cp) / total)


@torch.no_grad()
def _counts(head: MTPHead, samples: list[Sample], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: how often drafts 1..k were all right [B, steps], and the positions [B]."""
    device = head.proj.weight.device
    B = len(samples)
    n = torch.tensor([len(s.tokens) for s in samples], device=device)
    p = torch.tensor([s.prompt_len for s in samples], device=device)
    T = int(n.max())
    tokens = torch.zeros(B, T + steps + 1, dtype=torch.long, device=device)
    hidden = torch.zeros(B, T, head.config.dim, dtype=head.proj.weight.dtype, device=device)
    for r, s in enumerate(samples):
        tokens[r, : len(s.tokens)] = s.tokens.to(device)
        hidden[r, : len(s.hidden)] = s.hidden.to(device=device, dtype=hidden.dtype)
    slots = torch.arange(B, device=device)
    cache = head.new_cache(B, T + steps + 1)
    # Verified entries for the prompt: positions 0 .. prompt_len - 2 (padding lands beyond them).
    P = int(p.max())
    pos = torch.arange(P - 1, device=device)[None].expand(B, -1)
    head.fill(hidden[:, : P - 1], tokens[:, 1:P], pos, cache, slots)

    rows = torch.arange(B, device=device)
    correct_prefix = torch.zeros(B, steps, dtype=torch.long, device=device)  # 1..k all correct
    total = torch.zeros(B, dtype=torch.long, device=device)
    # t runs over answer positions: prompt_len - 1 .. n - 3 (x_{t+2} must exist).
    for j in range(int((n - p).max()) - 1):
        t = p - 1 + j
        live = t <= n - 3
        if not bool(live.any()):
            break
        tc = torch.minimum(t, n - 3).clamp(min=0)
        drafts = head.draft(hidden[rows, tc], tokens[rows, tc + 1], tc, cache, slots, steps)
        # Compare draft k with x_{t+k+1}; beyond the sequence end count as wrong.
        idx = tc[:, None] + 2 + torch.arange(steps, device=device)[None]
        truth = tokens.gather(1, idx)
        exists = idx <= (n - 1)[:, None]
        ok = (drafts == truth) & exists
        prefix = ok.long().cumprod(dim=1).bool() & live[:, None]
        correct_prefix += prefix.long()
        total += live.long()
    return correct_prefix, total
