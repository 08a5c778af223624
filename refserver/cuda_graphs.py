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

With `compile=True` (graph_opt_level 2) the phase runs inside `model.fused_blocks()`: every
transformer block (the target's 30 and the MTP head's) runs its torch.compile'd body (inductor,
one specialization per shape, no dynamic shapes), so the ~20 small kernels per layer of the
eager forward become a few fused Triton kernels around the matmuls, and the graph captures
those. Compilation runs in the warm-up before the first capture of a new shape and is logged
with its time. It needs Triton; without it the engine refuses to start rather than run unfused.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from refserver.model import fused_blocks

log = logging.getLogger(__name__)

WARMUP_RUNS = 2  # before capture, on the capture stream (lazy inits, the op's workspace)


KV_BUCKET_MIN = 256  # the shortest cache window a graph reads


def kv_buckets(max_len: int) -> list[int]:
    """The cache windows graphs are captured for: 256, 512, 1024, ... below `max_len`, then
    `max_len`. A step runs the graph of the smallest window that holds every position it reads:
    attention over the whole padded cache was most of a decode step's GPU time (H200, float32:
    ~2 of 4.4 ms for K+1 = 6 tokens at position 150 with a 2055-position cache)."""
    sizes = []
    n = KV_BUCKET_MIN
    while n < max_len:
        sizes.append(n)
        n *= 2
    return [*sizes, max_len]


PREFILL_MIN = 64  # the shortest captured prompt length


def prefill_lengths(kv_windows: Sequence[int]) -> list[int]:
    """The prompt lengths a prefill graph is captured for: 64, 128, ... below the first cache
    window, then the cache windows themselves (a prompt is padded to the smallest that holds
    it). An eager prefill launches the ~1,700 kernels of a forward one by one: ~18 ms of host
    time on an H200, as much as a whole request's decode steps at concurrency 8."""
    lengths = []
    n = PREFILL_MIN
    while n < kv_windows[0]:
        lengths.append(n)
        n *= 2
    return [*lengths, *kv_windows]


def bucket_for(buckets: Sequence[int], needed: int) -> int:
    """The smallest of `buckets` (ascending) >= `needed`."""
    for b in buckets:
        if b >= needed:
            return b
    raise ValueError(f"{needed} exceeds the largest bucket {buckets[-1]}")


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
    """`fn` captured on first use of each bucket, then replayed. A bucket is the shape of the
    first input (batch size, tokens per row) together with the keyword arguments (static facts
    such as the cache window, `static_kv_len`), which are passed to `fn` as they are."""

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        device: torch.device,
        pool: Any = None,
        compile: bool = False,
    ) -> None:
        self.name, self.fn, self.pool, self.compiled = name, fn, pool, compile
        if compile:
            _require_triton()
        self.stream = torch.cuda.Stream(device)
        self._captured: dict[tuple[Any, ...], _Captured] = {}

    def __call__(self, *inputs: Tensor, **static: Any) -> Any:
        entry = self.capture(*inputs, **static)
        for static_input, x in zip(entry.inputs, inputs, strict=True):
            static_input.copy_(x, non_blocking=True)
        entry.graph.replay()
        return entry.outputs

    def capture(self, *inputs: Tensor, **static: Any) -> _Captured:
        """The bucket of `inputs` and `static`, captured now unless it is already (the engine
        captures its buckets at start-up, so that no request waits for a capture or compile)."""
        bucket = (tuple(inputs[0].shape), *sorted(static.items()))
        entry = self._captured.get(bucket)
        if entry is None:
            entry = self._captured[bucket] = self._capture(inputs, static)
        return entry

    def _capture(self, inputs: Sequence[Tensor], facts: dict[str, Any]) -> _Captured:
        start = time.perf_counter()
        static = [x.clone() for x in inputs]
        fn = functools.partial(self.fn, **facts)
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        fusion = fused_blocks if self.compiled else contextlib.nullcontext
        with fusion(), torch.cuda.stream(self.stream):
            for _ in range(WARMUP_RUNS):  # the first one compiles (graph_opt_level 2)
                fn(*static)
        graph = torch.cuda.CUDAGraph()
        with fusion(), torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            outputs = fn(*static)
        current.wait_stream(self.stream)
        log.info(
            "cuda graph %s captured for inputs %s%s in %.0f ms%s",
            self.name,
            list(inputs[0].shape),
            "".join(f", {k}={v}" for k, v in facts.items()),
            1e3 * (time.perf_counter() - start),
            " (torch.compile'd first, inductor; compile time included)" if self.compiled else "",
        )
        return _Captured(graph, static, outputs)


def _require_triton() -> None:
    """graph_opt_level 2 compiles with inductor, whose GPU kernels are Triton's."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "--graph-optimization-config graph_opt_level=2 needs Triton (torch.compile's GPU "
            f"backend), which is not importable here: {exc}"
        ) from exc
