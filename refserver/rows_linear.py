"""refserver's float32 CPU linear for the few rows of a decode or verification step.

`rows_linear(x, w)` = x @ w.T (w [N, K]), computed by `csrc/rows_linear.cpp`: each weight row is
read once for all rows of x, with the rows ahead prefetched, so verifying K+1 tokens costs
little more than one token (MKL's sgemm repacks the weight per call, and oneDNN's packed kernel
adds its FMAs to the weight stream instead of hiding them under it). Every output is summed in
one fixed order, so a row's result does not depend on the other rows in the call or on the
thread count. Needs AVX2 + FMA (checked at run time) and K a multiple of 16.

`unavailable_reason()` is None where it runs; otherwise why not (said once in the log by the
caller that falls back, `refserver.model.Linear`).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
LIBRARY, SOURCES = "refserver-cpu", ["rows_linear.cpp"]  # its build folder / library, sources
K_MULTIPLE = 16  # the kernel's step over K
MAX_ROWS = 32  # above this oneDNN's blocked GEMM is faster (prefill): see benchmarks/verify_cost


@functools.cache
def unavailable_reason() -> str | None:
    """None when the kernel is built, loaded and this CPU has AVX2 + FMA; else the reason."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    result = build_library()
    if not result.ok:
        return result.detail
    if not torch.ops.refserver.rows_linear_supported():
        return "this CPU lacks AVX2 or FMA"
    return None


def build_library():
    """Build/load the kernel's library once per process (`cuda_ext.build.BuildResult`)."""
    from cuda_ext import build

    return build.ensure_cpu_library(LIBRARY, CSRC, SOURCES)


def fits(weight: Tensor) -> bool:
    """Whether the kernel can take this weight: float32, contiguous 2-D, K a multiple of 16."""
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.shape[1] % K_MULTIPLE == 0
    )


def rows_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x [..., K] @ weight.T -> [..., N], float32 on CPU (see the module docstring), with the
    arguments checked here first. `refserver.model.Linear` calls the op directly: it checked
    its weight once (`fits`), and the op's own checks still stand behind it."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"rows_linear: x must be float32 on CPU, got {x.dtype} on {x.device}")
    if not fits(weight):
        raise ValueError(
            f"rows_linear: weight must be a contiguous float32 CPU [N, K] with K a multiple of "
            f"{K_MULTIPLE}, got {weight.dtype} {tuple(weight.shape)} on {weight.device}"
        )
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"rows_linear: x {tuple(x.shape)} does not end in the weight's K = {weight.shape[1]}"
        )
    return torch.ops.refserver.rows_linear(x, weight)
