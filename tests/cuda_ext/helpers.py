"""Small helpers shared by the op tests: run an implementation on a copy, compare outputs."""

from __future__ import annotations

import torch

from refimpl.batch import OUTPUT_FIELDS, Batch


def outputs_of(impl, batch: Batch, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(draft_tokens, seq_lens_this_time) after running ``impl`` on a copy of ``batch``."""
    work = batch.to(device).clone()
    work.run(impl)
    return tuple(getattr(work, name).cpu() for name in OUTPUT_FIELDS)


def assert_same(expected, got, what: str) -> None:
    for name, want, have in zip(OUTPUT_FIELDS, expected, got, strict=True):
        if not torch.equal(want, have):
            rows = torch.nonzero((want != have).reshape(want.shape[0], -1).any(1)).flatten()
            b = int(rows[0])
            raise AssertionError(
                f"{what}: {name} differs in {len(rows)} rows; first row {b}: "
                f"expected {want[b].tolist()}, got {have[b].tolist()}"
            )


def fixed_shape_batch(gen: torch.Generator, batch: int, s_all: int, s_pre: int, k: int,
                      vocab: int = 6, threshold: int | None = None,
                      pad_to_max: bool = False) -> Batch:  # fmt: skip
    """A random batch with fixed shapes (what a captured CUDA graph replays on).

    A small vocabulary makes matches of every length common; values cover ori in [0, K + 1],
    prompt_lens 0..S_all, step_idx 0..S_pre-1, budgets cut by max_dec_len, and a threshold that
    bites somewhere in the batch unless given.
    """

    def ints(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=gen, dtype=torch.int64)

    lens = ints(0, k + 2, batch).to(torch.int32)
    step = ints(0, s_pre, batch)
    width = k + 2  # one spare column: nothing may be written there
    draft = ints(0, vocab, batch, width)
    return Batch(
        token_ids_all=ints(-1, vocab, batch, s_all),
        prompt_lens=ints(0, s_all + 1, batch),
        pre_ids=ints(-1, vocab, batch, s_pre),
        step_idx=step,
        draft_token_num=lens.clone(),
        draft_tokens=draft,
        seq_lens_this_time=lens,
        seq_lens_decoder=ints(-1, 3, batch).to(torch.int32),
        max_dec_len=step + ints(-2, k + 3, batch),
        max_ngram_size=int(ints(1, 6, 1)),
        min_ngram_size=1,
        max_draft_tokens=k,
        threshold=threshold if threshold is not None else int(ints(batch, batch * (k + 2), 1)),
        pad_to_max=pad_to_max,
    )


def wild_batch(gen: torch.Generator, batch: int, s_all: int, s_pre: int, k: int) -> Batch:
    """Arbitrary values in every tensor, valid shapes: the CUDA op must stay in bounds."""
    big = 2**62

    def ints(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=gen, dtype=torch.int64)

    def extreme(*shape: int) -> torch.Tensor:
        choices = torch.tensor([-(2**63), -(2**31), -1, 0, 1, 2**31, 2**63 - 1])
        pick = choices[ints(0, len(choices), *shape)]
        return torch.where(ints(0, 2, *shape) == 1, pick, ints(-big, big, *shape))

    lens = torch.where(ints(0, 2, batch) == 1, ints(-(2**31), 2**31, batch), ints(-2, k + 4, batch))
    # Scalars stay structurally valid (those are checked before any work on every device).
    max_n = int(torch.tensor([1, 3, 2**31, 2**63 - 1])[int(ints(0, 4, 1))])
    return Batch(
        token_ids_all=ints(-1, 4, batch, s_all),
        prompt_lens=torch.where(ints(0, 2, batch) == 1, extreme(batch), ints(-3, s_all + 3, batch)),
        pre_ids=ints(-1, 4, batch, s_pre),
        step_idx=torch.where(ints(0, 2, batch) == 1, extreme(batch), ints(-3, s_pre + 3, batch)),
        draft_token_num=lens.to(torch.int32),
        draft_tokens=ints(0, 4, batch, k + 1),
        seq_lens_this_time=lens.to(torch.int32),
        seq_lens_decoder=ints(-(2**31), 2**31, batch).to(torch.int32),
        max_dec_len=extreme(batch),
        max_ngram_size=max_n,
        min_ngram_size=min(max_n, int(torch.tensor([1, 2, 2**40])[int(ints(0, 3, 1))])),
        max_draft_tokens=k,
        threshold=int(extreme(1)),
        pad_to_max=bool(ints(0, 2, 1)),
    )


def pre_ids_overlapping_draft_tokens(batch: Batch, overlap: int) -> Batch:
    """``batch`` with draft_tokens and pre_ids rebuilt in one int64 buffer, pre_ids starting
    ``overlap`` elements before the end of draft_tokens (0: adjacent, no shared byte)."""
    rows, width = batch.draft_tokens.shape
    s_pre = batch.pre_ids.shape[1]
    start = rows * width - overlap
    buf = torch.zeros(start + rows * s_pre, dtype=torch.int64, device=batch.draft_tokens.device)
    draft, pre = buf[: rows * width].view(rows, width), buf[start:].view(rows, s_pre)
    pre.copy_(batch.pre_ids)
    draft.copy_(batch.draft_tokens)
    batch.draft_tokens, batch.pre_ids = draft, pre
    return batch
