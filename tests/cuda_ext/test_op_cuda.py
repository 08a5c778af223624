"""The CUDA op: agreement with the oracle and the CPU op, CUDA-graph capture and replay, no host
sync, no allocation after warm-up, streams, and wild input values (no fault, no corruption).

Marked ``cuda``: skipped with a reason where there is no GPU or no CUDA build.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import cuda_ext
import refimpl
from refimpl.generate import case_seed, generate

from .helpers import (
    assert_same,
    fixed_shape_batch,
    outputs_of,
    pre_ids_overlapping_draft_tokens,
    probe_edge_batch,
    wild_batch,
)

pytestmark = pytest.mark.cuda
SEED = 20261127
SMALL = ["mixed", "end_match", "priority", "threshold_pressure", "threshold_edge",
         "active_count", "minus_one", "short_rows", "large_batch", "large_batch_pressure"]  # fmt: skip
LARGE = ["batch_2048", "batch_8192", "long_prompt_128k", "wide_256x16k"]


@pytest.mark.parametrize("recipe", SMALL)
def test_small_recipes_match_the_oracle(cuda_op, recipe):
    for i in range(25):
        seed = case_seed(SEED, recipe, i)
        batch = generate(recipe, seed)
        want = outputs_of(refimpl.hybrid_mtp_ngram, batch)
        assert_same(want, outputs_of(cuda_op, batch, "cuda"), f"recipe={recipe} seed={seed}")


@pytest.mark.parametrize("recipe", LARGE)
def test_large_recipes_match_the_cpu_op(cuda_op, cpu_op, recipe):
    for i in range(3):
        seed = case_seed(SEED, recipe, i)
        batch = generate(recipe, seed)
        want = outputs_of(cpu_op, batch)
        assert_same(want, outputs_of(cuda_op, batch, "cuda"), f"recipe={recipe} seed={seed}")


@pytest.mark.parametrize(("batch", "s_all", "s_pre"), [(1, 131072, 4096), (8, 40000, 4100),
                                                       (300, 3000, 700), (4100, 64, 40)])  # fmt: skip
def test_fixed_shapes_match_the_cpu_op(cuda_op, cpu_op, batch, s_all, s_pre):
    gen = torch.Generator().manual_seed(SEED + batch)
    for i in range(4):
        b = fixed_shape_batch(gen, batch, s_all, s_pre, k=5, vocab=3 + 40 * (i % 2),
                              pad_to_max=bool(i % 2))  # fmt: skip
        assert_same(outputs_of(cpu_op, b), outputs_of(cuda_op, b, "cuda"),
                    f"seed={SEED + batch} draw={i} B={batch}")  # fmt: skip


@pytest.mark.parametrize(("batch", "s_all", "s_pre"), [(64, 33000, 300), (4500, 600, 300)])
def test_first_tile_probe_edges_match_the_cpu_op(cuda_op, cpu_op, batch, s_all, s_pre):
    """Windows at the edges of the first-tile probe (helpers.probe_edge_batch): B = 64 x 33K is
    one wave of 4224 probing units, B = 4500 more than a wave."""
    for i in range(2):
        seed = SEED + 15 + i
        b = probe_edge_batch(torch.Generator().manual_seed(seed), batch, s_all, s_pre)
        assert_same(outputs_of(cpu_op, b), outputs_of(cuda_op, b, "cuda"), f"seed={seed} B={batch}")


def _units(batch: int, s_all: int, s_pre: int) -> int:
    """Search units of the finest split (one 256-token tile each): the kernel's grid at these
    shapes (NOTES.md, segment sizing); at most 32 runs the fused one-block kernel."""
    return batch * max(1, -(-s_all // 256) + -(-s_pre // 256))


def _wider(b: refimpl.Batch, gen: torch.Generator, extra: int) -> refimpl.Batch:
    """The same rows in buffers `extra` columns wider: the new columns lie past every prompt and
    past every step, so they are no haystack, and the answer must not change."""

    def pad(t: torch.Tensor) -> torch.Tensor:
        noise = torch.randint(-1, 6, (t.shape[0], extra), generator=gen, dtype=t.dtype)
        return torch.cat([t, noise], dim=1)

    return dataclasses.replace(
        b.clone(), token_ids_all=pad(b.token_ids_all), pre_ids=pad(b.pre_ids)
    )


@pytest.mark.parametrize(("batch", "s_all", "s_pre"), [(1, 1000, 250), (1, 1024, 4096),
                                                       (3, 700, 300), (8, 512, 512), (16, 200, 56)])  # fmt: skip
def test_fused_grids_match_the_main_kernel_and_the_cpu_op(cuda_op, cpu_op, batch, s_all, s_pre):
    """Grids of at most 32 units run the fused kernel (one block: keys in shared memory, warp 0
    finalises); the same rows in buffers 4096 columns wider run the main kernel. Both must give
    the CPU op's answer."""
    assert _units(batch, s_all, s_pre) <= 32 < _units(batch, s_all + 4096, s_pre + 4096)
    seed = SEED + 32 + batch
    gen = torch.Generator().manual_seed(seed)
    for i in range(6):
        b = fixed_shape_batch(gen, batch, s_all, s_pre, k=5, vocab=3 + 40 * (i % 2),
                              pad_to_max=bool(i % 2))  # fmt: skip
        want = outputs_of(cpu_op, b)
        what = f"seed={seed} draw={i} B={batch} {s_all}+{s_pre}"
        assert_same(want, outputs_of(cuda_op, b, "cuda"), f"{what}: fused kernel")
        wide = _wider(b, gen, 4096)
        assert_same(want, outputs_of(cpu_op, wide), f"{what}: CPU op, wider buffers")
        assert_same(want, outputs_of(cuda_op, wide, "cuda"), f"{what}: main kernel")


def _copy_into(static: refimpl.Batch, new: refimpl.Batch) -> None:
    for name, t in static.tensors().items():
        t.copy_(getattr(new, name))


def test_cuda_graph_capture_and_replay(cuda_op):
    """Capture once, replay on fresh random inputs: same as eager and as the oracle."""
    gen = torch.Generator().manual_seed(SEED)
    shape = dict(batch=96, s_all=700, s_pre=300, k=5)
    first = fixed_shape_batch(gen, **shape, threshold=300, pad_to_max=True)
    static = first.to("cuda").clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on the capture's side stream, as torch documents
        for _ in range(2):
            warm = static.clone()
            warm.run(cuda_op)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static.run(cuda_op)
    for i in range(8):
        new = fixed_shape_batch(gen, **shape, threshold=300, pad_to_max=True)
        new.max_ngram_size, new.min_ngram_size = first.max_ngram_size, first.min_ngram_size
        _copy_into(static, new.to("cuda"))
        graph.replay()
        torch.cuda.synchronize()
        replayed = (static.draft_tokens.cpu(), static.seq_lens_this_time.cpu())
        assert_same(outputs_of(cuda_op, new, "cuda"), replayed, f"replay {i} vs eager")
        assert_same(outputs_of(refimpl.hybrid_mtp_ngram, new), replayed, f"replay {i} vs oracle")
    print(f"seed={SEED}: 8 graph replays agree with eager and the oracle")


def test_no_host_sync_and_no_allocation_after_warmup(cuda_op):
    gen = torch.Generator().manual_seed(SEED)
    batch = fixed_shape_batch(gen, 512, 2048, 512, k=5).to("cuda")
    batch.clone().run(cuda_op)  # warm-up: builds the per-stream workspace
    work = [batch.clone() for _ in range(5)]
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()["allocation.all.allocated"]
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for w in work:
            w.run(cuda_op)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] == before


def test_streams_get_their_own_workspace(cuda_op, cpu_op):
    gen = torch.Generator().manual_seed(SEED + 1)
    batches = [fixed_shape_batch(gen, 200, 1500, 400, k=4) for _ in range(4)]
    work = [b.to("cuda").clone() for b in batches]
    streams = [torch.cuda.Stream() for _ in range(2)]
    torch.cuda.synchronize()
    for i, w in enumerate(work):
        with torch.cuda.stream(streams[i % 2]):
            w.run(cuda_op)
    torch.cuda.synchronize()
    for b, w in zip(batches, work, strict=True):
        assert_same(outputs_of(cpu_op, b), (w.draft_tokens.cpu(), w.seq_lens_this_time.cpu()),
                    "two streams")  # fmt: skip


def test_wild_values_never_fault_and_leave_no_state(cuda_op, cpu_op):
    """Arbitrary values (unvalidated on CUDA): no fault, only in-range writes, clean workspace."""
    gen = torch.Generator().manual_seed(SEED + 2)
    for i in range(30):
        b = wild_batch(gen, batch=int(torch.randint(1, 300, (1,), generator=gen)),
                       s_all=int(torch.randint(1, 3000, (1,), generator=gen)),
                       s_pre=int(torch.randint(1, 600, (1,), generator=gen)), k=4)  # fmt: skip
        w = b.to("cuda").clone()
        w.run(cuda_op)
        torch.cuda.synchronize()  # a fault would surface here
        lens = w.seq_lens_this_time.cpu()
        ori = b.seq_lens_this_time
        changed = lens != ori
        # rows are only ever lengthened, within [1, W], and only where ori was in range
        assert bool((lens[changed] > ori[changed]).all()), f"draw {i}"
        assert bool((lens[changed] <= b.draft_tokens.shape[1]).all()), f"draw {i}"
        assert bool((ori[changed] > 0).all()), f"draw {i}"
    # the workspace is left clean: a valid batch right after is still exact
    good = fixed_shape_batch(gen, 64, 500, 200, k=4)
    assert_same(outputs_of(cpu_op, good), outputs_of(cuda_op, good, "cuda"), "after wild values")


def test_opcheck_and_compile_on_cuda(cuda_op):
    batch = generate("mixed", SEED).to("cuda")
    args = (*batch.tensors().values(), batch.max_ngram_size, batch.min_ngram_size,
            batch.max_draft_tokens, batch.threshold, batch.pad_to_max)  # fmt: skip
    torch.library.opcheck(torch.ops.specgate.hybrid_mtp_ngram.default, args)

    def step(*a):
        torch.ops.specgate.hybrid_mtp_ngram(*a)
        return a[6].sum()

    torch.compile(step, fullgraph=True, backend="aot_eager")(*args)


def test_value_check_is_available_for_cuda_tensors(cuda_op):
    batch = generate("mixed", SEED).to("cuda")
    batch.step_idx.reshape(-1)[0] = batch.pre_ids.shape[1]
    batch.seq_lens_this_time[0] = 1
    with pytest.raises(ValueError, match=r"step_idx\[0\]"):
        cuda_ext.check_values(batch.token_ids_all, batch.prompt_lens, batch.pre_ids,
                              batch.step_idx, batch.seq_lens_this_time, batch.draft_tokens)  # fmt: skip


def test_outputs_sharing_memory_are_refused_without_a_sync(cuda_op):
    """SPEC §1.5 on CUDA tensors: the overlap check reads pointers and strides only, so it
    raises (naming both) even where any synchronising call would raise instead."""
    batch = pre_ids_overlapping_draft_tokens(generate("mixed", SEED).to("cuda"), overlap=1)
    same = generate("mixed", SEED).to("cuda")
    same.seq_lens_decoder = same.seq_lens_this_time
    adjacent = pre_ids_overlapping_draft_tokens(generate("mixed", SEED).to("cuda"), overlap=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(ValueError, match="draft_tokens and pre_ids share memory"):
            batch.run(cuda_op)
        with pytest.raises(ValueError, match="seq_lens_this_time and seq_lens_decoder share"):
            same.run(cuda_op)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    adjacent.run(cuda_op)  # one buffer, no shared byte: accepted, same as the oracle
    assert_same(outputs_of(refimpl.hybrid_mtp_ngram, generate("mixed", SEED)),
                (adjacent.draft_tokens.cpu(), adjacent.seq_lens_this_time.cpu()), "adjacent")  # fmt: skip
