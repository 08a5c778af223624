"""Argument checks on the Python side of the op: SPEC §1.5 (shared with the oracle, in
``refimpl.validate``) plus the limits the C++ kernels add.

The C++ kernels check the same things (for callers of ``torch.ops.specgate`` directly), but
raising here first keeps errors out of C++ unwinding, which some toolchains get wrong: on the
GPU image (extension built by /opt/gcc against torch 2.11) any C++ exception thrown by the
op crashed the process (see NOTES.md). Structure checks read no tensor data (no host sync);
value checks run for CPU tensors only.
"""

from __future__ import annotations

import torch

from refimpl import validate
from refimpl.validate import HybridArgumentError, check_no_overlap

__all__ = ["DTYPES", "check_no_overlap", "check_structure", "check_values"]

DTYPES: dict[str, torch.dtype] = {name: dtype for name, (dtype, _) in validate.TENSOR_ARGS.items()}
MAX_WIDTH = 2**31 - 1  # the kernels index columns with int32


def check_structure(tensors: dict[str, torch.Tensor], scalars: dict[str, object]) -> None:
    """SPEC §1.5 structure checks, then int64 scalars, int32 widths and contiguous outputs."""
    validate.check_structure(tensors, scalars)
    for name in ("max_ngram_size", "min_ngram_size", "max_draft_tokens", "threshold"):
        if not -(2**63) <= scalars[name] <= 2**63 - 1:
            raise HybridArgumentError(f"{name}: {scalars[name]} does not fit in int64")
    for name in ("token_ids_all", "pre_ids", "draft_tokens"):
        if tensors[name].shape[1] >= MAX_WIDTH:
            raise HybridArgumentError(f"{name}: width {tensors[name].shape[1]} must be < 2^31")
    for name in ("draft_tokens", "seq_lens_this_time"):
        if not tensors[name].is_contiguous():
            raise HybridArgumentError(f"{name}: must be contiguous (written in place)")


def check_values(
    token_ids_all: torch.Tensor,
    prompt_lens: torch.Tensor,
    pre_ids: torch.Tensor,
    step_idx: torch.Tensor,
    seq_lens_this_time: torch.Tensor,
    draft_tokens: torch.Tensor,
) -> None:
    """Out-of-range values (SPEC §1.5), naming the first bad row; a ValueError.

    For CUDA tensors this reads device memory (a host sync): call it explicitly, off the hot
    path. ``prompt_lens``/``step_idx`` are checked on active rows only (never read otherwise).
    """
    shapes = validate.Shapes(
        batch=token_ids_all.shape[0],
        prompt_capacity=token_ids_all.shape[1],
        generated_capacity=pre_ids.shape[1],
        draft_width=draft_tokens.shape[1],
    )
    validate.check_values(shapes, prompt_lens, step_idx, seq_lens_this_time)
