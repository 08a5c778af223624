"""Argument checks of SPEC §1.5, shared by the oracle and the Python side of any implementation.

Every error names the argument, what was expected and what was given; value errors also name
the row. Structural checks (dtype, rank, batch size, device, widths, scalar ranges) come first
and need no data; value checks read the tensors and so belong to CPU paths only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# name -> (dtype, allowed ranks). Ranks (1, 2) mean [B] or [B, 1].
TENSOR_ARGS: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
    "token_ids_all": (torch.int64, (2,)),
    "prompt_lens": (torch.int64, (1, 2)),
    "pre_ids": (torch.int64, (2,)),
    "step_idx": (torch.int64, (1, 2)),
    "draft_token_num": (torch.int32, (1,)),
    "draft_tokens": (torch.int64, (2,)),
    "seq_lens_this_time": (torch.int32, (1,)),
    "seq_lens_decoder": (torch.int32, (1,)),
    "max_dec_len": (torch.int64, (1, 2)),
}


class HybridArgumentError(ValueError):
    """Bad input to hybrid_mtp_ngram; the message names the argument (and the row, for values)."""


@dataclass(frozen=True)
class Shapes:
    batch: int
    prompt_capacity: int  # S_all
    generated_capacity: int  # S_pre
    draft_width: int  # W


def check_structure(tensors: dict[str, torch.Tensor], scalars: dict[str, int]) -> Shapes:
    """Dtype, rank, batch agreement, device agreement, draft width and scalar ranges."""
    device = None
    batch = None
    for name, (dtype, ranks) in TENSOR_ARGS.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise HybridArgumentError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise HybridArgumentError(f"{name}: expected dtype {dtype}, got {t.dtype}")
        if t.dim() not in ranks:
            shapes = " or ".join("[B]" if r == 1 else "[B, S]" for r in ranks)
            if ranks == (1, 2):
                shapes = "[B] or [B, 1]"
            raise HybridArgumentError(
                f"{name}: expected shape {shapes}, got {list(t.shape)} (rank {t.dim()})"
            )
        if ranks == (1, 2) and t.dim() == 2 and t.shape[1] != 1:
            raise HybridArgumentError(f"{name}: expected shape [B] or [B, 1], got {list(t.shape)}")
        if batch is None:
            batch = t.shape[0]
        elif t.shape[0] != batch:
            raise HybridArgumentError(
                f"{name}: batch size {t.shape[0]} disagrees with token_ids_all's {batch}"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise HybridArgumentError(f"{name}: on {t.device}, but token_ids_all is on {device}")

    for name, value in scalars.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise HybridArgumentError(f"{name}: expected an int, got {value!r}")
    if scalars["min_ngram_size"] < 1:
        raise HybridArgumentError(f"min_ngram_size: must be >= 1, got {scalars['min_ngram_size']}")
    if scalars["max_ngram_size"] < scalars["min_ngram_size"]:
        raise HybridArgumentError(
            f"max_ngram_size: must be >= min_ngram_size ({scalars['min_ngram_size']}), "
            f"got {scalars['max_ngram_size']}"
        )
    if scalars["max_draft_tokens"] < 1:
        raise HybridArgumentError(
            f"max_draft_tokens: must be >= 1, got {scalars['max_draft_tokens']}"
        )
    width = tensors["draft_tokens"].shape[1]
    if width < scalars["max_draft_tokens"] + 1:
        raise HybridArgumentError(
            f"draft_tokens: width {width} is narrower than max_draft_tokens + 1 = "
            f"{scalars['max_draft_tokens'] + 1}"
        )
    return Shapes(
        batch=batch or 0,
        prompt_capacity=tensors["token_ids_all"].shape[1],
        generated_capacity=tensors["pre_ids"].shape[1],
        draft_width=width,
    )


def check_values(
    shapes: Shapes,
    prompt_lens: list[int],
    step_idx: list[int],
    seq_lens_this_time: list[int],
) -> None:
    """Out-of-range values (SPEC §1.5), naming the row.

    ``step_idx`` is only checked on active rows (``seq_lens_this_time > 0``): inactive slots
    may hold stale values and are never read. ``prompt_lens`` is checked likewise.
    """
    for b, length in enumerate(seq_lens_this_time):
        if not 0 <= length <= shapes.draft_width:
            raise HybridArgumentError(
                f"seq_lens_this_time[{b}] = {length}: must be in [0, {shapes.draft_width}] "
                f"(the width of draft_tokens)"
            )
        if length == 0:
            continue
        if not 0 <= prompt_lens[b] <= shapes.prompt_capacity:
            raise HybridArgumentError(
                f"prompt_lens[{b}] = {prompt_lens[b]}: must be in [0, {shapes.prompt_capacity}] "
                f"(the width of token_ids_all)"
            )
        if not 0 <= step_idx[b] < shapes.generated_capacity:
            raise HybridArgumentError(
                f"step_idx[{b}] = {step_idx[b]}: must be in [0, {shapes.generated_capacity}) "
                f"(the width of pre_ids) for an active row"
            )
