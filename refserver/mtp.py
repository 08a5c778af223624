"""The engine's side of MTP drafting: keeps the head's KV cache in sync and drafts s tokens.

The head itself (`refserver.mtp_head.MTPHead`) is a DeepSeek-V3 style module. Its cache must
hold, for every verified position p, the entry computed from (target hidden h_p, token x_{p+1}).
After each target forward the engine hands over the new verified pairs of each row; this module
`fill`s them all in one block forward (they overwrite what earlier drafts wrote speculatively).
The output at the last pair IS draft step 1, so `MTPHead.draft_from` continues from there.
Optionally the drafts choose among the target's N most frequent tokens only
(`MTPHead.set_draft_vocab`): a proposal, so verification and output are unchanged.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from refserver.model import Transformer, freeze_linears_, host_ints_to

log = logging.getLogger(__name__)

LONG_FILL = 16  # rows with more new pairs than this (a prompt) are refreshed in their own call
DEFAULT_HEAD_PATH = Path(__file__).parent / "assets" / "mtp_head.safetensors"
# Token ids of the target's answers by descending frequency (tensors `rank`, `count`); written by
# mtp_train from the target's own greedy answers to the training prompts.
DEFAULT_RANK_PATH = Path(__file__).parent / "assets" / "target_token_rank.safetensors"


@dataclass
class MTPInput:
    """New verified pairs of one row: hidden[i] is the target's hidden state at position
    start + i and next_tokens[i] the token at position start + i + 1."""

    slot: int
    hidden: Tensor  # [m, d]
    next_tokens: Sequence[int]  # m tokens
    start: int


def join_mtp_inputs(inputs: Sequence[MTPInput]) -> MTPInput:
    """Consecutive inputs of one row (each starts where the last one ended) as one."""
    for a, b in itertools.pairwise(inputs):
        if a.slot != b.slot or a.start + len(a.next_tokens) != b.start:
            raise ValueError(
                f"MTP inputs are not consecutive: slot {a.slot} positions {a.start}+"
                f"{len(a.next_tokens)}, then slot {b.slot} from {b.start}"
            )
    return MTPInput(
        inputs[0].slot,
        torch.cat([x.hidden for x in inputs]),
        [t for x in inputs for t in x.next_tokens],
        inputs[0].start,
    )


class MTPDrafter:
    def __init__(self, head: torch.nn.Module, max_slots: int, max_len: int) -> None:
        self.head = head
        self.cache = head.new_cache(max_slots, max_len)

    @torch.inference_mode()
    def draft(self, inputs: Sequence[MTPInput], steps: int) -> Tensor:
        """s draft tokens per row, [len(inputs), s] on the model's device. One batched `fill`
        refreshes every row's verified pairs AND runs draft step 1 on its last pair (it is just
        one more causal position), so a step costs s block forwards, not s + 1."""
        if not inputs:
            raise ValueError("MTPDrafter.draft: no rows")
        rows = self.fill_long(inputs, LONG_FILL)
        width = max(len(x.next_tokens) for x in rows)
        batch = self.batch(rows, [x.slot for x in rows], width)
        return self.draft_batch(*batch, steps)

    def fill_long(self, inputs: Sequence[MTPInput], longer_than: int) -> list[MTPInput]:
        """Rows with more than `longer_than` pairs (a prompt) get all but their last pair filled
        on their own (not padded into the batch); returns every row with what is left."""
        rows = []
        for x in inputs:
            m = len(x.next_tokens)
            if m > longer_than:
                device = x.hidden.device
                self.head.fill(
                    x.hidden[None, : m - 1],
                    torch.tensor([x.next_tokens[: m - 1]], device=device),
                    torch.arange(x.start, x.start + m - 1, device=device)[None],
                    self.cache,
                    torch.tensor([x.slot], device=device),
                )
                x = MTPInput(x.slot, x.hidden[m - 1 :], x.next_tokens[m - 1 :], x.start + m - 1)
            rows.append(x)
        return rows

    def batch(
        self, rows: Sequence[MTPInput], slots: Sequence[int], width: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(hidden [B, width, d], next tokens [B, width], positions [B, width], index of each
        row's last pair [B], slots [B]) for the batch `slots`: each of `rows` goes to the row of
        its slot. Shorter rows repeat their last pair (the same cache entry written with the
        same value, so the repeat is harmless); a slot without a row (a CUDA graph's batch is a
        prefix of the slots) gets zeros at positions 0.. of its own cache, which nothing reads."""
        by_slot = {x.slot: x for x in rows}
        device = rows[0].hidden.device
        d = rows[0].hidden.shape[-1]
        # Every row's hidden states in one gather from their concatenation (row x's pair i is
        # at offset[x.slot] + i); a slot without a row reads the zero row appended last.
        pairs = torch.cat([x.hidden for x in rows] + [rows[0].hidden.new_zeros(1, d)])
        sizes = [len(x.next_tokens) for x in rows]
        offset = dict(zip(by_slot, itertools.accumulate([0, *sizes]), strict=False))
        zero_row = sum(sizes)
        gather: list[int] = []
        tokens: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        for slot in slots:
            x = by_slot.get(slot)
            if x is None:
                gather += [zero_row] * width
                tokens += [0] * width
                positions += range(width)
                last.append(0)
                continue
            m = len(x.next_tokens)
            idx = list(range(m)) + [m - 1] * (width - m)
            gather += [offset[slot] + i for i in idx]
            tokens += [x.next_tokens[i] for i in idx]
            positions += [x.start + i for i in idx]
            last.append(m - 1)
        B, W = len(slots), width
        host = host_ints_to(gather + tokens + positions + last + list(slots), device)  # one copy
        return (
            pairs[host[: B * W]].view(B, W, d),
            host[B * W : 2 * B * W].view(B, W),
            host[2 * B * W : 3 * B * W].view(B, W),
            host[3 * B * W : 3 * B * W + B],
            host[3 * B * W + B :],
        )

    def draft_batch(
        self,
        hidden: Tensor,
        tokens: Tensor,
        positions: Tensor,
        last: Tensor,
        slots: Tensor,
        steps: int,
        static_kv_len: int | None = None,
    ) -> Tensor:
        """Drafts [B, steps] for a batch from `batch`; device work only (with `static_kv_len`,
        no host sync: a CUDA graph can capture it)."""
        out = self.head.fill(hidden, tokens, positions, self.cache, slots, static_kv_len)
        rows = torch.arange(len(slots), device=slots.device)
        first = out[rows, last]  # step 1's block output: each row's last real pair
        pos_last = positions[rows, last]
        return self.head.draft_from(
            first, pos_last, self.cache, slots, steps, static_kv_len=static_kv_len
        )


def load_token_rank(path: str | Path | None = None) -> Tensor:
    """Token ids [V] by descending frequency in the target's answers (`rank` of the file)."""
    from safetensors import safe_open

    rank_path = Path(path) if path is not None else DEFAULT_RANK_PATH
    if not rank_path.is_file():
        raise FileNotFoundError(f"--mtp-token-rank {rank_path} does not exist")
    with safe_open(str(rank_path), framework="pt") as f:
        if "rank" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise ValueError(f"--mtp-token-rank {rank_path}: no tensor named 'rank'")
        return f.get_tensor("rank").long()


def load_mtp_drafter(
    path: str | Path | None,
    target: Transformer,
    max_slots: int,
    max_len: int,
    draft_vocab: int = 0,
    rank_path: str | Path | None = None,
) -> MTPDrafter:
    """The trained head from `path` (default: the committed asset), else an untrained one.

    draft_vocab > 0 restricts the drafts to that many of the target's most frequent tokens
    (`rank_path`, default: the committed asset); 0 keeps the full vocabulary.
    """
    from refserver.mtp_head import MTPHead

    head_path = Path(path) if path is not None else DEFAULT_HEAD_PATH
    if head_path.is_file():
        head = MTPHead.load(head_path, target)
        log.info("MTP head loaded from %s", head_path)
    elif path is not None:
        raise FileNotFoundError(f"--mtp-head {head_path} does not exist")
    else:
        log.warning(
            "!!! MTP head weights %s not found: using an UNTRAINED head. Output stays correct "
            "(verification is lossless) but MTP acceptance will be near zero. !!!",
            head_path,
        )
        head = MTPHead.from_target(target)
    head.eval().requires_grad_(False)
    freeze_linears_(head)
    if draft_vocab > 0:
        rank = load_token_rank(rank_path)
        if draft_vocab > rank.numel():
            raise ValueError(
                f"--mtp-draft-vocab {draft_vocab}: the token rank has only {rank.numel()} tokens"
            )
        head.set_draft_vocab(rank[:draft_vocab])
        log.info("MTP drafts restricted to the %d most frequent target tokens", draft_vocab)
    return MTPDrafter(head, max_slots, max_len)
