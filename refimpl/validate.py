"""Argument checks of SPEC §1.5, shared by the oracle and the Python side of any implementation.

Every error names the argument, what was expected and what was given; value errors also name
the row. Structural checks (dtype, rank, batch size, device, widths, scalar ranges) and the
output-overlap check come first and need no data (only pointers, shapes and strides, so they
never sync a GPU); value checks read the tensors and so belong to CPU paths only.
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


OUTPUTS = ("draft_tokens", "seq_lens_this_time")


class HybridArgumentError(ValueError):
    """Bad input to hybrid_mtp_ngram; the message names the argument (and the row, for values)."""


class HybridArgumentTypeError(HybridArgumentError, TypeError):
    """An argument of the wrong type or dtype (both a ValueError and a TypeError)."""


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
            raise HybridArgumentTypeError(
                f"{name}: expected a torch.Tensor, got {type(t).__name__}"
            )
        if t.dtype != dtype:
            raise HybridArgumentTypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
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
        if name == "pad_to_max":
            if not isinstance(value, bool):
                raise HybridArgumentTypeError(f"pad_to_max: expected a bool, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise HybridArgumentTypeError(f"{name}: expected an int, got {value!r}")
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


def byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, last byte + 1) of the memory ``t`` addresses: from its data pointer, the
    farthest element its sizes and strides reach. An empty tensor spans nothing."""
    if t.numel() == 0:
        return (0, 0)
    start = t.data_ptr()
    farthest = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return (start, start + (farthest + 1) * t.element_size())


def check_no_overlap(tensors: dict[str, torch.Tensor]) -> None:
    """SPEC §1.5: neither output shares memory with any other argument (nor with the other output).

    Memory, not identity: views and slices of one buffer overlap when the byte ranges they span
    intersect, whatever their data pointers. A strided view whose elements interleave with the
    output's counts as overlapping too (it spans the same bytes). Reads pointers, shapes and
    strides only: no tensor data, no host sync, so it is fine under CUDA-graph capture. Call it
    after check_structure (which guarantees one device).
    """
    names = list(TENSOR_ARGS)
    for i, out in enumerate(names):
        if out not in OUTPUTS:
            continue
        lo, hi = byte_span(tensors[out])
        for j, other in enumerate(names):
            if j == i or (other in OUTPUTS and j < i):  # the output pair is checked once
                continue
            other_lo, other_hi = byte_span(tensors[other])
            if lo < other_hi and other_lo < hi:
                raise HybridArgumentError(
                    f"{out} and {other} share memory: the outputs (draft_tokens, "
                    "seq_lens_this_time) are written in place and must not overlap any other "
                    "argument"
                )


def check_values(
    shapes: Shapes,
    prompt_lens: torch.Tensor,
    step_idx: torch.Tensor,
    seq_lens_this_time: torch.Tensor,
) -> None:
    """Out-of-range values (SPEC §1.5), naming the first bad row.

    ``prompt_lens`` and ``step_idx`` are only checked on active rows (``seq_lens_this_time >
    0``): inactive slots may hold stale values and are never read. Vectorised, so the CPU op
    can afford it on every call; on CUDA tensors it syncs the host, so it is a separate call.
    """
    lens = seq_lens_this_time.reshape(-1).to(torch.int64)
    plen, steps = prompt_lens.reshape(-1), step_idx.reshape(-1)
    active = lens > 0
    width, s_all, s_pre = shapes.draft_width, shapes.prompt_capacity, shapes.generated_capacity
    problems = [
        ((lens < 0) | (lens > width), "seq_lens_this_time", lens,
         f"must be in [0, {width}] (the width of draft_tokens)"),
        (active & ((plen < 0) | (plen > s_all)), "prompt_lens", plen,
         f"must be in [0, {s_all}] (the width of token_ids_all)"),
        (active & ((steps < 0) | (steps >= s_pre)), "step_idx", steps,
         f"must be in [0, {s_pre}) (the width of pre_ids) for an active row"),
    ]  # fmt: skip
    bad_rows = [
        (int(torch.nonzero(bad)[0]), name, values, rule)
        for bad, name, values, rule in problems
        if bool(bad.any())
    ]
    if bad_rows:  # the first bad row in row order, as a sequential check would report it
        row, name, values, rule = min(bad_rows, key=lambda item: item[0])
        raise HybridArgumentError(f"{name}[{row}] = {int(values[row])}: {rule}")
