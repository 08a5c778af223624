"""The engine's side of MTP drafting: keeps the head's KV cache in sync and drafts s tokens.

The head itself (`refserver.mtp_head.MTPHead`) is a DeepSeek-V3 style module. Its cache must
hold, for every verified position p, the entry computed from (target hidden h_p, token x_{p+1}).
After each target forward the engine hands over the new verified pairs of each row; this module
`fill`s all but the last one (they overwrite what earlier drafts wrote speculatively) and starts
`draft` from the last one, which writes that entry itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from refserver.model import Transformer

log = logging.getLogger(__name__)

DEFAULT_HEAD_PATH = Path(__file__).parent / "assets" / "mtp_head.safetensors"
# Token ids of the target's answers by descending frequency (tensors `rank`, `count`); written by
# refserver/train from the target's own greedy answers to the training prompts.
DEFAULT_RANK_PATH = Path(__file__).parent / "assets" / "target_token_rank.safetensors"


@dataclass
class MTPInput:
    """New verified pairs of one row: hidden[i] is the target's hidden state at position
    start + i and next_tokens[i] the token at position start + i + 1."""

    slot: int
    hidden: Tensor  # [m, d]
    next_tokens: Sequence[int]  # m tokens
    start: int


class MTPDrafter:
    def __init__(self, head: torch.nn.Module, max_slots: int, max_len: int) -> None:
        self.head = head
        self.cache = head.new_cache(max_slots, max_len)

    @torch.inference_mode()
    def draft(self, inputs: Sequence[MTPInput], steps: int) -> list[list[int]]:
        if not inputs:
            return []
        device = inputs[0].hidden.device
        short = [x for x in inputs if 1 < len(x.next_tokens) <= 16]
        for x in inputs:  # a prompt's worth of pairs is filled on its own, not padded
            if len(x.next_tokens) > 16:
                self._fill([x], device)
        if short:
            self._fill(short, device)
        hidden_last = torch.stack([x.hidden[-1] for x in inputs])
        next_token = torch.tensor([x.next_tokens[-1] for x in inputs], device=device)
        positions = torch.tensor([x.start + len(x.next_tokens) - 1 for x in inputs], device=device)
        slots = torch.tensor([x.slot for x in inputs], device=device)
        drafts = self.head.draft(hidden_last, next_token, positions, self.cache, slots, steps)
        return drafts.tolist()

    def _fill(self, inputs: Sequence[MTPInput], device: torch.device) -> None:
        """Write pairs 0 .. m-2 of each row; shorter rows repeat their last pair (same entry,
        same value, so the repeat is harmless)."""
        T = max(len(x.next_tokens) for x in inputs) - 1
        hidden, tokens, positions = [], [], []
        for x in inputs:
            idx = [min(i, len(x.next_tokens) - 2) for i in range(T)]
            hidden.append(x.hidden[idx])
            tokens.append([x.next_tokens[i] for i in idx])
            positions.append([x.start + i for i in idx])
        self.head.fill(
            torch.stack(hidden),
            torch.tensor(tokens, device=device),
            torch.tensor(positions, device=device),
            self.cache,
            torch.tensor([x.slot for x in inputs], device=device),
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
    head.block.fuse_()
    if draft_vocab > 0:
        rank = load_token_rank(rank_path)
        if draft_vocab > rank.numel():
            raise ValueError(
                f"--mtp-draft-vocab {draft_vocab}: the token rank has only {rank.numel()} tokens"
            )
        head.set_draft_vocab(rank[:draft_vocab])
        log.info("MTP drafts restricted to the %d most frequent target tokens", draft_vocab)
    return MTPDrafter(head, max_slots, max_len)
