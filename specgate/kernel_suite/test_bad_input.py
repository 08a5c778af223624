"""SPEC §1.5: bad input gets an error naming the argument (and the row), and loses nothing."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

from refimpl import Batch, check, make_batch, report
from refimpl import hybrid_mtp_ngram as oracle


def _base() -> Batch:
    return make_batch(
        [[1, 2, 3, 4, 5], [5, 4, 3]],
        [[1, 2, 3], [3, 4]],
        [[3], [4, 9]],
        [8, 6],
        [64, 64],
        max_ngram_size=2,
        min_ngram_size=1,
        max_draft_tokens=3,
    )


def _set(name: str, value: Callable[[torch.Tensor], torch.Tensor]):
    def edit(batch: Batch) -> Batch:
        setattr(batch, name, value(getattr(batch, name)))
        return batch

    return edit


def _scalar(name: str, value: int):
    def edit(batch: Batch) -> Batch:
        setattr(batch, name, value)
        return batch

    return edit


def _cell(name: str, row: int, value: int):
    def edit(batch: Batch) -> Batch:
        getattr(batch, name).reshape(-1)[row] = value
        return batch

    return edit


STRUCTURAL = {
    "token_ids_all int32": ("token_ids_all", _set("token_ids_all", lambda t: t.int())),
    "token_ids_all rank 1": ("token_ids_all", _set("token_ids_all", lambda t: t[:, 0].clone())),
    "prompt_lens [B, 2]": (
        "prompt_lens",
        _set("prompt_lens", lambda t: t.reshape(-1, 1).repeat(1, 2)),
    ),
    "pre_ids float": ("pre_ids", _set("pre_ids", lambda t: t.float())),
    "step_idx int32": ("step_idx", _set("step_idx", lambda t: t.int())),
    "draft_token_num int64": ("draft_token_num", _set("draft_token_num", lambda t: t.long())),
    "draft_tokens too narrow": ("draft_tokens", _set("draft_tokens", lambda t: t[:, :3].clone())),
    "seq_lens_this_time int64": (
        "seq_lens_this_time",
        _set("seq_lens_this_time", lambda t: t.long()),
    ),
    "seq_lens_decoder wrong batch": (
        "seq_lens_decoder",
        _set("seq_lens_decoder", lambda t: t[:1].clone()),
    ),
    "max_dec_len int32": ("max_dec_len", _set("max_dec_len", lambda t: t.int())),
    "min_ngram_size 0": ("min_ngram_size", _scalar("min_ngram_size", 0)),
    "max_ngram_size < min": ("max_ngram_size", _scalar("max_ngram_size", 0)),
    "max_draft_tokens 0": ("max_draft_tokens", _scalar("max_draft_tokens", 0)),
}

VALUES = {
    "prompt_lens above S_all": ("prompt_lens", 1, _cell("prompt_lens", 1, 6)),
    "prompt_lens negative": ("prompt_lens", 1, _cell("prompt_lens", 1, -1)),
    "step_idx at S_pre": ("step_idx", 1, _cell("step_idx", 1, 3)),
    "step_idx negative": ("step_idx", 0, _cell("step_idx", 0, -1)),
    "seq_lens_this_time above W": ("seq_lens_this_time", 1, _cell("seq_lens_this_time", 1, 5)),
    "seq_lens_this_time negative": ("seq_lens_this_time", 0, _cell("seq_lens_this_time", 0, -2)),
}


def _expect_error(impl, batch: Batch, pattern: str) -> None:
    before = (batch.draft_tokens.clone(), batch.seq_lens_this_time.clone())
    with pytest.raises(Exception) as info:
        batch.run(impl.fn)
    message = str(info.value)
    assert re.search(pattern, message), f"{impl.name}: error {message!r} does not match {pattern!r}"
    assert torch.equal(batch.draft_tokens.cpu(), before[0].cpu()), (
        "draft_tokens changed by a failed call"
    )
    assert torch.equal(batch.seq_lens_this_time.cpu(), before[1].cpu()), (
        "seq_lens_this_time changed"
    )


@pytest.mark.kernel
def test_valid_base_batch_is_accepted(impl, kernel_device, reproduce, request):
    """The batch every bad-input case starts from is valid and gives the hand-checked result."""
    batch = _base()
    mismatches = check(impl.fn, batch.to(kernel_device))
    if mismatches:
        pytest.fail(report(batch, mismatches, impl.name, reproduce(request.node)), pytrace=False)
    batch.run(oracle)
    # row 0: n=2 [2, 3] matches the prompt at 1 -> [4, 5]; row 1: n=1 [4] matches the prompt -> [3]
    assert batch.seq_lens_this_time.tolist() == [3, 3]
    assert batch.draft_tokens[:, :3].tolist() == [[3, 4, 5], [4, 9, 3]]


@pytest.mark.kernel
@pytest.mark.parametrize("case", sorted(STRUCTURAL))
def test_structural_error_names_the_argument(case, impl, kernel_device):
    name, edit = STRUCTURAL[case]
    _expect_error(impl, edit(_base().to(kernel_device)), re.escape(name))


@pytest.mark.kernel
@pytest.mark.parametrize("case", sorted(VALUES))
def test_value_error_names_argument_and_row(case, impl, kernel_device):
    if kernel_device != "cpu":
        pytest.skip("SPEC §1.5: the CUDA path does not sync the host to check values")
    name, row, edit = VALUES[case]
    _expect_error(impl, edit(_base()), rf"{re.escape(name)}.*(\[{row}\]|row {row}\b|\b{row}\b)")


@pytest.mark.kernel
def test_device_mismatch_names_the_argument(impl):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put one argument elsewhere")
    batch = _base().to("cuda")
    batch.pre_ids = batch.pre_ids.cpu()
    _expect_error(impl, batch, "pre_ids")


# --- outputs that share memory with another argument (SPEC §1.5) ------------------------------

OUTPUTS = ("draft_tokens", "seq_lens_this_time")
ARGS = tuple(_base().tensors())
# Every (output, other argument) pair, each output pair once.
PAIRS = [(out, other) for out in OUTPUTS for other in ARGS
         if other != out and not (other in OUTPUTS and ARGS.index(other) < ARGS.index(out))]  # fmt: skip


def _sharing(a: str, b: str) -> str:
    """An error that names both arguments and says they share memory (any wording of it)."""
    said = r"(?i:share|overlap|alias)"
    return rf"(?=.*\b{a}\b)(?=.*\b{b}\b)(?=.*{said})"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _in_one_buffer(batch: Batch, first: str, second: str, gap: int) -> Batch:
    """`first` and `second` rebuilt as views of one byte buffer, with their values: `second`
    starts `gap` bytes after the end of `first` (a negative gap overlaps the two by that many
    bytes). Different data pointers, one storage."""
    a, b = getattr(batch, first), getattr(batch, second)
    start = _nbytes(a) + gap
    buf = torch.zeros(max(_nbytes(a), start + _nbytes(b)), dtype=torch.uint8, device=a.device)

    def view(t: torch.Tensor, offset: int) -> torch.Tensor:
        v = buf[offset : offset + _nbytes(t)].view(t.dtype).view(t.shape)
        v.copy_(t)
        return v

    setattr(batch, first, view(a, 0))
    setattr(batch, second, view(b, start))
    return batch


@pytest.mark.kernel
@pytest.mark.parametrize(("out", "other"), PAIRS, ids=[f"{o}-{a}" for o, a in PAIRS])
def test_output_overlapping_an_argument_names_both(out, other, impl, kernel_device):
    """The last 8 bytes of `out` are the first 8 bytes of `other`: a partial overlap that a
    same-data_ptr test would miss. Both orders in memory."""
    for first, second in ((out, other), (other, out)):
        batch = _in_one_buffer(_base().to(kernel_device), first, second, gap=-8)
        _expect_error(impl, batch, _sharing(out, other))


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("out", "other"),
    [("draft_tokens", "token_ids_all"), ("draft_tokens", "pre_ids"),
     ("seq_lens_this_time", "seq_lens_decoder"), ("seq_lens_this_time", "draft_token_num")],
)  # fmt: skip
def test_output_that_is_the_same_tensor_as_an_argument_names_both(out, other, impl, kernel_device):
    """The aliasing engines write by accident: the very same tensor passed twice."""
    batch = _base().to(kernel_device)
    if other == "pre_ids":  # pre_ids must be at least as wide as step_idx needs: it is, W = 4
        batch.step_idx = batch.step_idx.clamp(max=batch.draft_tokens.shape[1] - 1)
    setattr(batch, other, getattr(batch, out))
    _expect_error(impl, batch, _sharing(out, other))


@pytest.mark.kernel
def test_strided_view_spanning_an_output_names_both(impl, kernel_device):
    """pre_ids row 0 lies just before draft_tokens in one buffer and row 1 just after it: no
    element is shared, but pre_ids spans draft_tokens' bytes, which counts as sharing memory."""
    batch = _base().to(kernel_device)
    rows, width = batch.draft_tokens.shape
    s_pre = batch.pre_ids.shape[1]
    n = rows * width
    buf = torch.zeros(s_pre + n + s_pre, dtype=torch.int64, device=kernel_device)
    draft = buf[s_pre : s_pre + n].view(rows, width)
    pre = buf.as_strided((rows, s_pre), (s_pre + n, 1))  # rows at buf[:s_pre], buf[s_pre + n:]
    draft.copy_(batch.draft_tokens)
    pre.copy_(batch.pre_ids)
    batch.draft_tokens, batch.pre_ids = draft, pre
    _expect_error(impl, batch, _sharing("draft_tokens", "pre_ids"))


@pytest.mark.kernel
@pytest.mark.parametrize(("out", "other"), PAIRS, ids=[f"{o}-{a}" for o, a in PAIRS])
def test_adjacent_views_of_one_buffer_are_accepted(out, other, impl, kernel_device, request):
    """One storage is fine when the bytes do not overlap: the check is about memory, not
    storage identity. The result is the oracle's on the same values."""
    batch = _in_one_buffer(_base().to(kernel_device), out, other, gap=0)
    want = _base()
    want.run(oracle)
    batch.run(impl.fn)
    assert torch.equal(batch.draft_tokens.cpu(), want.draft_tokens), impl.name
    assert torch.equal(batch.seq_lens_this_time.cpu(), want.seq_lens_this_time), impl.name
