"""The CPU op: registration (opcheck, torch.compile), [B]/[B,1] shapes, 64-bit extremes, errors.

Conformance against the oracle is the kernel suite's job (``pytest -m kernel``); these tests
cover what belongs to the op as a torch op.
"""

from __future__ import annotations

import pytest
import torch

import cuda_ext
import refimpl
from refimpl.generate import generate

from .helpers import (
    assert_same,
    outputs_of,
    pre_ids_overlapping_draft_tokens,
    probe_edge_batch,
    probe_edge_expected,
)

SEED = 20261127


def fd_unit_case(column_shapes: bool = False) -> refimpl.Batch:
    """FastDeploy's own unit case (issue 2): expected seq_lens 6, row [8, 7, 6, 10, 9, 8]."""
    gen = [10, 9, 8, 7, 6, 10, 9, 8, 7]
    return refimpl.make_batch(
        [list(range(10))] * 2, [gen] * 2, [[8, 7]] * 2, [12, 12], [512, 512],
        max_ngram_size=5, min_ngram_size=2, max_draft_tokens=5, column_shapes=column_shapes,
    )  # fmt: skip


@pytest.mark.parametrize("column_shapes", [False, True])
def test_fastdeploy_unit_case(cpu_op, column_shapes):
    drafts, lens = outputs_of(cpu_op, fd_unit_case(column_shapes))
    assert lens.tolist() == [6, 6]
    assert drafts[:, :6].tolist() == [[8, 7, 6, 10, 9, 8]] * 2


def opcheck_args(batch: refimpl.Batch) -> tuple:
    return (*batch.tensors().values(), batch.max_ngram_size, batch.min_ngram_size,
            batch.max_draft_tokens, batch.threshold, batch.pad_to_max)  # fmt: skip


@pytest.mark.parametrize("recipe", ["mixed", "threshold_pressure", "end_match"])
def test_opcheck(cpu_op, recipe):
    """Schema (mutation annotations), fake tensor kernel, and AOT dispatch agree with the op."""
    print(f"seed={SEED} recipe={recipe}")
    batch = generate(recipe, SEED)
    torch.library.opcheck(torch.ops.specgate.hybrid_mtp_ngram.default, opcheck_args(batch))


def test_torch_compile_traces_the_op(cpu_op):
    """fullgraph=True: the op must be traceable (fake kernel), not a graph break."""
    batch = generate("mixed", SEED)

    def step(*args):
        torch.ops.specgate.hybrid_mtp_ngram(*args)
        return args[6].sum()  # read an output after the in-place op

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager, traced = batch.clone(), batch.clone()
    step(*opcheck_args(eager))
    compiled(*opcheck_args(traced))
    assert torch.equal(eager.draft_tokens, traced.draft_tokens)
    assert torch.equal(eager.seq_lens_this_time, traced.seq_lens_this_time)


@pytest.mark.parametrize(
    ("max_dec_len", "step", "threshold"),
    [
        (2**63 - 1, 0, 1024),  # max_dec_len - step - 1 is INT64_MAX - 1
        (-(2**63), 5, 1024),  # would underflow int64: budget <= 0
        (2**63 - 1, 5, 2**63 - 1),  # threshold never bites
        (2**63 - 1, 5, -(2**63)),  # threshold always bites
        (7, 5, 5),  # budget from max_dec_len: 1 token
    ],
)
def test_64bit_extremes_match_the_oracle(cpu_op, max_dec_len, step, threshold):
    gen = [1, 2, 3, 4, 1, 2][: step + 1]
    batch = refimpl.make_batch(
        [[1, 2, 3, 9, 8, 7]], [gen], [[5]], [1], [max_dec_len],
        max_ngram_size=3, min_ngram_size=1, max_draft_tokens=4, threshold=threshold,
    )  # fmt: skip
    assert_same(outputs_of(refimpl.hybrid_mtp_ngram, batch), outputs_of(cpu_op, batch), "extreme")


def test_large_ngram_size_is_capped_by_step(cpu_op):
    batch = refimpl.make_batch(
        [[4, 5, 6, 7]], [[4, 5]], [[1]], [1], [100],
        max_ngram_size=2**62, min_ngram_size=1, max_draft_tokens=3,
    )  # fmt: skip
    # The oracle would loop over 2^62 sizes; by SPEC only n <= step_idx = 1 is tried: ngram [5]
    # matches prompt position 1 and the budget min(3 - 1 + 1, 100 - 1 - 1) = 3 copies [6, 7].
    drafts, lens = outputs_of(cpu_op, batch)
    assert lens.tolist() == [3]
    assert drafts[0].tolist() == [1, 6, 7, -7]


def test_empty_batch(cpu_op):
    batch = refimpl.make_batch([], [], [], [], [], max_ngram_size=3, min_ngram_size=1,
                               max_draft_tokens=2)  # fmt: skip
    batch.run(cpu_op)  # B = 0: nothing to do, no error


# --- SPEC §1.5: every error names the argument (and the row for values), before any work ------


def _bad(batch: refimpl.Batch, **changes) -> tuple:
    args = dict(batch.tensors()) | batch.scalars()
    args.update(changes)
    return args


BAD_STRUCTURE = [
    ("token_ids_all", lambda b: {"token_ids_all": b.token_ids_all.int()}, "token_ids_all"),
    ("prompt_lens rank", lambda b: {"prompt_lens": b.prompt_lens.reshape(-1, 1, 1)}, "prompt_lens"),
    ("step_idx [B,2]", lambda b: {"step_idx": b.step_idx.reshape(-1, 1).repeat(1, 2)}, "step_idx"),
    ("pre_ids batch", lambda b: {"pre_ids": b.pre_ids[:1]}, "pre_ids"),
    ("draft_token_num dtype", lambda b: {"draft_token_num": b.draft_token_num.long()},
     "draft_token_num"),
    ("seq_lens_decoder dtype", lambda b: {"seq_lens_decoder": b.seq_lens_decoder.long()},
     "seq_lens_decoder"),
    ("max_dec_len dtype", lambda b: {"max_dec_len": b.max_dec_len.int()}, "max_dec_len"),
    ("narrow draft_tokens", lambda b: {"max_draft_tokens": b.draft_tokens.shape[1]},
     "draft_tokens"),
    ("min_ngram_size 0", lambda b: {"min_ngram_size": 0}, "min_ngram_size"),
    ("max < min", lambda b: {"max_ngram_size": 1, "min_ngram_size": 2}, "max_ngram_size"),
    ("max_draft_tokens 0", lambda b: {"max_draft_tokens": 0}, "max_draft_tokens"),
    ("device", lambda b: {"seq_lens_decoder": b.seq_lens_decoder.to("meta")}, "seq_lens_decoder"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "change", "names"), BAD_STRUCTURE, ids=[c[0] for c in BAD_STRUCTURE]
)
def test_bad_structure_names_the_argument(cpu_op, label, change, names):
    batch = fd_unit_case()
    before = batch.clone()
    with pytest.raises((ValueError, TypeError, RuntimeError), match=names):
        cpu_op(**_bad(batch, **change(batch)))
    assert torch.equal(batch.draft_tokens, before.draft_tokens)  # no work was done
    assert torch.equal(batch.seq_lens_this_time, before.seq_lens_this_time)


BAD_VALUES = [
    ("prompt_lens", lambda b: b.prompt_lens.__setitem__(1, 11), r"prompt_lens\[1\] = 11"),
    ("prompt_lens<0", lambda b: b.prompt_lens.__setitem__(1, -1), r"prompt_lens\[1\] = -1"),
    ("step_idx", lambda b: b.step_idx.__setitem__(1, 9), r"step_idx\[1\] = 9"),
    ("step_idx<0", lambda b: b.step_idx.__setitem__(0, -2), r"step_idx\[0\] = -2"),
    ("seq_lens>W", lambda b: b.seq_lens_this_time.__setitem__(1, 7),
     r"seq_lens_this_time\[1\] = 7"),
    ("seq_lens<0", lambda b: b.seq_lens_this_time.__setitem__(0, -1),
     r"seq_lens_this_time\[0\] = -1"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "poke", "message"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_values_name_the_row(cpu_op, label, poke, message):
    batch = fd_unit_case()
    poke(batch)
    before = batch.clone()
    with pytest.raises(ValueError, match=message):
        batch.run(cpu_op)
    assert torch.equal(batch.draft_tokens, before.draft_tokens)
    # the same checks, callable for any device without the op
    with pytest.raises(ValueError, match=message):
        cuda_ext.check_values(batch.token_ids_all, batch.prompt_lens, batch.pre_ids,
                              batch.step_idx, batch.seq_lens_this_time, batch.draft_tokens)  # fmt: skip


def test_inactive_rows_may_hold_stale_values(cpu_op):
    """step_idx/prompt_lens of a row with seq_lens_this_time == 0 are never read (SPEC §1.3)."""
    batch = fd_unit_case()
    batch.seq_lens_this_time[1] = 0
    batch.step_idx[1] = 10**9
    batch.prompt_lens[1] = -5
    assert_same(outputs_of(refimpl.hybrid_mtp_ngram, batch), outputs_of(cpu_op, batch), "stale")


def test_cuda_requested_but_not_built_is_a_clear_error(monkeypatch):
    from cuda_ext import build

    monkeypatch.setitem(build._results, "cuda", build.BuildResult(False, "nvcc not found"))
    with pytest.raises(RuntimeError, match="CUDA kernel is not built: nvcc not found"):
        cuda_ext._require(torch.device("cuda", 0))
    assert cuda_ext.is_available("cuda") is False
    with pytest.raises(ValueError, match="device_type"):
        cuda_ext.is_available("tpu")


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="C++ exceptions thrown by the op crash the process on the GPU image's toolchain "
    "(cuda_ext/NOTES.md); the Python entry point raises first there",
)
def test_cpp_checks_also_name_the_argument_and_row(cpu_op):
    """Callers of torch.ops.specgate directly get the same errors from the C++ kernel."""
    op = torch.ops.specgate.hybrid_mtp_ngram
    batch = fd_unit_case()
    args = list(opcheck_args(batch))
    args[0] = batch.token_ids_all.int()
    with pytest.raises(TypeError, match="token_ids_all: expected dtype"):
        op(*args)
    batch.step_idx[1] = 9
    with pytest.raises(ValueError, match=r"step_idx\[1\] = 9"):
        op(*opcheck_args(batch))


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="C++ exceptions thrown by the op crash the process on the GPU image's toolchain "
    "(cuda_ext/NOTES.md); the Python entry point raises first there",
)
def test_cpp_checks_refuse_outputs_that_share_memory(cpu_op):
    """The C++ check (ngram_checks.h, shared by the CPU and CUDA registrations) on its own:
    memory overlap, not pointer equality, and nothing written when it refuses."""
    op = torch.ops.specgate.hybrid_mtp_ngram
    same = fd_unit_case()
    same.seq_lens_decoder = same.seq_lens_this_time
    with pytest.raises(ValueError, match="seq_lens_this_time and seq_lens_decoder share memory"):
        op(*opcheck_args(same))
    partial = pre_ids_overlapping_draft_tokens(fd_unit_case(), overlap=1)
    before = partial.draft_tokens.clone(), partial.seq_lens_this_time.clone()
    with pytest.raises(ValueError, match="draft_tokens and pre_ids share memory"):
        op(*opcheck_args(partial))
    assert torch.equal(partial.draft_tokens, before[0])
    assert torch.equal(partial.seq_lens_this_time, before[1])
    adjacent = pre_ids_overlapping_draft_tokens(fd_unit_case(), overlap=0)
    op(*opcheck_args(adjacent))  # one buffer, no shared byte: accepted
    assert_same(outputs_of(refimpl.hybrid_mtp_ngram, fd_unit_case()),
                (adjacent.draft_tokens, adjacent.seq_lens_this_time), "adjacent")  # fmt: skip


def test_probe_edge_batch_plants_what_it_says(cpu_op):
    """The CUDA probe test's batch (helpers.probe_edge_batch): every row gets the tokens its case
    says, from the oracle and from the CPU op, so that test checks what it claims to."""
    seed = 20261201
    batch = probe_edge_batch(torch.Generator().manual_seed(seed), 24, 700, 300)
    want = outputs_of(refimpl.hybrid_mtp_ngram, batch)
    assert_same(want, outputs_of(cpu_op, batch), f"seed={seed}")
    draft, lens = want
    for b, tokens in enumerate(probe_edge_expected(batch)):
        assert int(lens[b]) == 1 + len(tokens), f"seed={seed} row {b}"
        assert draft[b, 1 : 1 + len(tokens)].tolist() == tokens, f"seed={seed} row {b}"
