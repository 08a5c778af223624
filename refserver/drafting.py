"""Draft extension by n-gram lookup through `hybrid_mtp_ngram` (SPEC §1), the op or the oracle.

The engine hands over, per row, the prompt, the emitted tokens, the last emitted token and its
MTP drafts (none for the plain `ngram` method). This module lays them out in the op's exact
argument list, calls the op once for the batch, and reads back each row's full draft.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

HybridFn = Callable[..., None]


def resolve_impl(ngram_impl: str, device: torch.device) -> tuple[str, HybridFn]:
    """("op" | "oracle", callable). `auto` is the kernel suite's default (refimpl.impls): the op
    when it is built for `device`, else the oracle with a warning, an error under
    SPECGATE_REQUIRE_OP."""
    import refimpl
    from refimpl import impls

    if ngram_impl == "oracle":
        return "oracle", refimpl.hybrid_mtp_ngram
    impl = impls.default(device.type)
    if impl.name == impls.OP:
        return "op", impl.fn
    if ngram_impl == "op":
        raise RuntimeError(f"--ngram-impl op requested but the op is unusable: {impl.how}")
    return "oracle", impl.fn


@dataclass
class DraftRow:
    prompt: Sequence[int]
    generated: Sequence[int]  # emitted tokens; the last one is draft_tokens[b, 0]
    mtp_drafts: Sequence[int]
    max_tokens: int
    kv_len: int  # tokens in the target's KV cache; > 0 for every active row


class NgramExtender:
    def __init__(
        self,
        impl: str,
        fn: HybridFn,
        K: int,
        max_ngram_size: int,
        min_ngram_size: int,
        device: torch.device,
    ) -> None:
        self.impl, self.fn, self.K = impl, fn, K
        self.max_ngram_size, self.min_ngram_size = max_ngram_size, min_ngram_size
        # The oracle works on CPU tensors; the op gets tensors on the model's device.
        self.device = device if impl == "op" else torch.device("cpu")

    def extend(self, rows: Sequence[DraftRow]) -> list[list[int]]:
        """Full drafts per row: the MTP drafts followed by the n-gram tokens the op appends."""
        B, K = len(rows), self.K
        s_all = max(len(r.prompt) for r in rows)
        s_pre = max(len(r.generated) + len(r.mtp_drafts) for r in rows) + 1
        token_ids_all = torch.full((B, s_all), -1, dtype=torch.int64)
        pre_ids = torch.full((B, s_pre), -1, dtype=torch.int64)
        draft_tokens = torch.full((B, K + 1), -1, dtype=torch.int64)
        for b, r in enumerate(rows):
            token_ids_all[b, : len(r.prompt)] = torch.tensor(r.prompt, dtype=torch.int64)
            chain = [*r.generated, *r.mtp_drafts]
            pre_ids[b, : len(chain)] = torch.tensor(chain, dtype=torch.int64)
            draft_tokens[b, : 1 + len(r.mtp_drafts)] = torch.tensor(
                [r.generated[-1], *r.mtp_drafts], dtype=torch.int64
            )
        args = dict(
            token_ids_all=token_ids_all,
            prompt_lens=torch.tensor([len(r.prompt) for r in rows], dtype=torch.int64),
            pre_ids=pre_ids,
            step_idx=torch.tensor(
                [len(r.generated) + len(r.mtp_drafts) - 1 for r in rows], dtype=torch.int64
            ),
            draft_token_num=torch.full((B,), K, dtype=torch.int32),
            draft_tokens=draft_tokens,
            seq_lens_this_time=torch.tensor(
                [1 + len(r.mtp_drafts) for r in rows], dtype=torch.int32
            ),
            seq_lens_decoder=torch.tensor([r.kv_len for r in rows], dtype=torch.int32),
            max_dec_len=torch.tensor([r.max_tokens for r in rows], dtype=torch.int64),
        )
        args = {k: v.to(self.device) for k, v in args.items()}
        self.fn(
            **args,
            max_ngram_size=self.max_ngram_size,
            min_ngram_size=self.min_ngram_size,
            max_draft_tokens=K,
        )
        lens = args["seq_lens_this_time"].tolist()
        tokens = args["draft_tokens"].tolist()
        return [tokens[b][1 : lens[b]] for b in range(B)]
