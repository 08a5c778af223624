"""The straightforward design's argument errors, on CPU (its kernels run only on the GPU machine,
where op_sweep checks it against the oracle at every point before timing it)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import op_sweep, straightforward
from benchmarks.op_sweep import Point


def _args(batch: int) -> list:
    inp = op_sweep.make_inputs(
        Point(batch, 32, 16, "early"), "cpu", torch.Generator().manual_seed(15)
    )
    return [inp[k] for k in op_sweep.ARG_ORDER]


def test_more_rows_than_one_block_is_refused_with_the_batch_size():
    with pytest.raises(ValueError, match=r"token_ids_all: B=1025, the design takes B <= 1024"):
        straightforward.hybrid_mtp_ngram(*_args(1025), 3, 1, 5)


def test_cpu_tensors_are_refused_with_the_device():
    with pytest.raises(ValueError, match=r"token_ids_all: .* runs on CUDA, got cpu"):
        straightforward.hybrid_mtp_ngram(*_args(4), 3, 1, 5)
