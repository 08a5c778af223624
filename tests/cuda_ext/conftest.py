"""Fixtures of the op tests: the op on CPU (skip if it cannot be built) and on CUDA."""

from __future__ import annotations

import pytest
import torch

import cuda_ext
from cuda_ext import build


@pytest.fixture(scope="session")
def cpu_op():
    if not cuda_ext.is_available("cpu"):
        pytest.skip(f"the CPU op is not built: {build.ensure_cpu().detail}")
    return cuda_ext.hybrid_mtp_ngram


@pytest.fixture(scope="session")
def cuda_op():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (the cuda tests run on the GPU machine)")
    if not cuda_ext.is_available("cuda"):
        pytest.skip(f"the CUDA op is not built: {build.ensure_cuda().detail}")
    return cuda_ext.hybrid_mtp_ngram
