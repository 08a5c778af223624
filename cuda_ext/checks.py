"""SPEC §1.5 argument checks on the Python side of the op, with the C++ kernels' messages.

The C++ kernels check the same things (for callers of ``torch.ops.specgate`` directly), but
raising here first keeps errors out of C++ unwinding, which some toolchains get wrong: on the
GPU image (extension built by /opt/gcc against torch 2.11) any C++ exception thrown by the
op crashed the process (see NOTES.md). Structure checks read no tensor data (no host sync);
value checks are vectorised and run for CPU tensors only.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "token_ids_all": torch.int64,
    "prompt_lens": torch.int64,
    "pre_ids": torch.int64,
    "step_idx": torch.int64,
    "draft_token_num": torch.int32,
    "draft_tokens": torch.int64,
    "seq_lens_this_time": torch.int32,
    "seq_lens_decoder": torch.int32,
    "max_dec_len": torch.int64,
}
COLUMN_OK = {"prompt_lens", "step_idx", "max_dec_len"}  # [B] or [B, 1]
RANK = {"token_ids_all": 2, "pre_ids": 2, "draft_tokens": 2}  # others: 1
MAX_WIDTH = 2**31 - 1


def check_structure(tensors: dict[str, torch.Tensor], scalars: dict[str, object]) -> None:
    """Dtype, rank, batch size, device, widths and scalar ranges; raises TypeError/ValueError."""
    first = tensors["token_ids_all"]
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"token_ids_all: expected a torch.Tensor, got {type(first).__name__}")
    for name, dtype in DTYPES.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
        if name in COLUMN_OK:
            if not (t.dim() == 1 or (t.dim() == 2 and t.shape[1] == 1)):
                raise ValueError(f"{name}: expected shape [B] or [B, 1], got {list(t.shape)}")
        elif t.dim() != RANK.get(name, 1):
            raise ValueError(
                f"{name}: expected rank {RANK.get(name, 1)}, got shape {list(t.shape)}"
            )
        if t.shape[0] != first.shape[0]:
            raise ValueError(
                f"{name}: batch size {t.shape[0]} disagrees with token_ids_all's {first.shape[0]}"
            )
        if t.device != first.device:
            raise ValueError(f"{name}: on {t.device}, but token_ids_all is on {first.device}")
    for name in ("max_ngram_size", "min_ngram_size", "max_draft_tokens", "threshold"):
        value = scalars[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {value!r}")
    if not isinstance(scalars["pad_to_max"], bool):
        raise TypeError(f"pad_to_max: expected a bool, got {scalars['pad_to_max']!r}")
    lo, hi = -(2**63), 2**63 - 1
    for name in ("max_ngram_size", "min_ngram_size", "max_draft_tokens", "threshold"):
        if not lo <= scalars[name] <= hi:
            raise ValueError(f"{name}: {scalars[name]} does not fit in int64")
    min_n, max_n, k = (
        scalars["min_ngram_size"],
        scalars["max_ngram_size"],
        scalars["max_draft_tokens"],
    )
    if min_n < 1:
        raise ValueError(f"min_ngram_size: must be >= 1, got {min_n}")
    if max_n < min_n:
        raise ValueError(f"max_ngram_size: must be >= min_ngram_size ({min_n}), got {max_n}")
    if k < 1:
        raise ValueError(f"max_draft_tokens: must be >= 1, got {k}")
    width = tensors["draft_tokens"].shape[1]
    if width < k + 1:
        raise ValueError(
            f"draft_tokens: width {width} is narrower than max_draft_tokens + 1 = {k + 1}"
        )
    for name in ("token_ids_all", "pre_ids", "draft_tokens"):
        if tensors[name].shape[1] >= MAX_WIDTH:
            raise ValueError(f"{name}: width {tensors[name].shape[1]} must be < 2^31")
    for name in ("draft_tokens", "seq_lens_this_time"):
        if not tensors[name].is_contiguous():
            raise ValueError(f"{name}: must be contiguous (written in place)")


def check_values(
    token_ids_all: torch.Tensor,
    prompt_lens: torch.Tensor,
    pre_ids: torch.Tensor,
    step_idx: torch.Tensor,
    seq_lens_this_time: torch.Tensor,
    draft_tokens: torch.Tensor,
) -> None:
    """Out-of-range values (SPEC §1.5), naming the first bad row; ValueError.

    For CUDA tensors this reads device memory (a host sync): call it explicitly, off the hot
    path. ``prompt_lens``/``step_idx`` are checked on active rows only (never read otherwise).
    """
    lens = seq_lens_this_time.reshape(-1).to(torch.int64)
    plen, steps = prompt_lens.reshape(-1), step_idx.reshape(-1)
    width, s_all, s_pre = draft_tokens.shape[1], token_ids_all.shape[1], pre_ids.shape[1]
    active = lens > 0
    problems = [
        ((lens < 0) | (lens > width), "seq_lens_this_time", lens,
         f"must be in [0, {width}] (the width of draft_tokens)"),
        (active & ((plen < 0) | (plen > s_all)), "prompt_lens", plen,
         f"must be in [0, {s_all}] (the width of token_ids_all)"),
        (active & ((steps < 0) | (steps >= s_pre)), "step_idx", steps,
         f"must be in [0, {s_pre}) (the width of pre_ids) for an active row"),
    ]  # fmt: skip
    bad_rows = [(int(torch.nonzero(bad)[0]), name, values, rule)
                for bad, name, values, rule in problems if bool(bad.any())]  # fmt: skip
    if bad_rows:  # the first bad row in row order, as the sequential checks would report it
        row, name, values, rule = min(bad_rows, key=lambda item: item[0])
        raise ValueError(f"{name}[{row}] = {int(values[row])}: {rule}")
