"""CUDA-graph capture and replay of one engine phase, per batch-size bucket.

`--graph-optimization-config '{"use_cudagraph": true}'` (FastDeploy's flag): on the GPU a
135M-parameter forward is ~1,700 small kernels whose launches cost far more host time than the
device needs to run them. A captured graph launches them all at once.

A phase is a function of tensors only (`fn(*inputs) -> outputs`) whose shapes depend only on
the bucket, that never syncs with the host, and that is idempotent: running it twice on the
same inputs leaves the same state (it writes cache entries and in/out buffers from its inputs,
so the warm-up runs before capture change nothing). The engine runs the SAME function eagerly
when graphs are off: one code path for inputs and outputs.

Replay returns the graph's own output tensors: they are overwritten by the next replay of the
same bucket, so the caller copies (indexes) what it keeps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

WARMUP_RUNS = 2  # before capture, on the capture stream (lazy inits, the op's workspace)


def capture_sizes(max_num_seqs: int, sizes: Sequence[int] | None) -> list[int]:
    """The batch-size buckets: `sizes` (cut to max_num_seqs, which is always one), or
    1, 2, 4, 8, ... up to max_num_seqs."""
    if sizes is None:
        sizes = [1 << i for i in range(max_num_seqs.bit_length()) if 1 << i <= max_num_seqs]
    return sorted({n for n in sizes if n <= max_num_seqs} | {max_num_seqs})


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor]
    outputs: Any


class GraphedPhase:
    """`fn` captured on first use of each bucket (the batch size of its first input), then
    replayed."""

    def __init__(
        self, name: str, fn: Callable[..., Any], device: torch.device, pool: Any = None
    ) -> None:
        self.name, self.fn, self.pool = name, fn, pool
        self.stream = torch.cuda.Stream(device)
        self._captured: dict[int, _Captured] = {}

    def __call__(self, *inputs: Tensor) -> Any:
        bucket = inputs[0].shape[0]
        entry = self._captured.get(bucket)
        if entry is None:
            entry = self._captured[bucket] = self._capture(inputs)
        for static, x in zip(entry.inputs, inputs, strict=True):
            static.copy_(x, non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    def _capture(self, inputs: Sequence[Tensor]) -> _Captured:
        start = time.perf_counter()
        static = [x.clone() for x in inputs]
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            for _ in range(WARMUP_RUNS):
                self.fn(*static)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            outputs = self.fn(*static)
        current.wait_stream(self.stream)
        log.info(
            "cuda graph %s captured for batch %d in %.0f ms",
            self.name,
            inputs[0].shape[0],
            1e3 * (time.perf_counter() - start),
        )
        return _Captured(graph, static, outputs)
