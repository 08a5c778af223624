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


PROBE_CASES = 6  # row % PROBE_CASES picks the case in probe_edge_batch


def probe_edge_batch(gen: torch.Generator, batch: int, s_all: int, s_pre: int) -> Batch:
    """Windows planted at the edges of the CUDA search's first-tile probe (ngram_cuda_kernel.cu:
    "Early exit"), random tokens elsewhere (never 1, 2 or 3, the ngram's tokens). K = 5, ori = 1,
    so a found window gives 5 tokens (fewer if the haystack ends). By ``row % 6``:

    0. prompt of < 256 tokens with the full ngram ending at its LAST token (not a window: none
       follows) and a 2-gram at 40; the full ngram in the generated tokens at 100 must win.
    1. the full ngram in the first tile at 20, again later in the prompt and in the generated
       tokens: the prompt's first one wins.
    2. a 2-gram in the first tile, the full ngram in the prompt's last 500 tokens: that one wins.
    3. prompts of 2..4 tokens with the ngram at 0..2 (a window only when the prompt has 4), the
       full ngram in the generated tokens at 100.
    4. step_idx = 1 (n capped at 1): the last token at 10 in the prompt.
    5. nothing in the prompt, the full ngram in the generated tokens at 150.
    """
    assert s_all >= 600 and s_pre >= 300, "the planted positions need these widths"

    def ints(low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=gen, dtype=torch.int64)

    tok = ints(10, 10_000, batch, s_all)
    pre = ints(10, 10_000, batch, s_pre)
    step = torch.full((batch,), s_pre - 5, dtype=torch.int64)
    plen = ints(300, s_all + 1, batch)
    ngram = torch.tensor([1, 2, 3])
    for b in range(batch):
        case, s = b % PROBE_CASES, int(step[b])
        pre[b, s - 2 : s + 1] = ngram
        if case == 0:
            plen[b] = 100 + b % 50
            tok[b, plen[b] - 3 : plen[b]] = ngram
            tok[b, 39:41] = ngram[1:]
            pre[b, 98:101] = ngram
        elif case == 1:
            tok[b, 18:21] = ngram
            tok[b, plen[b] - 103 : plen[b] - 100] = ngram
            pre[b, 48:51] = ngram
        elif case == 2:
            plen[b] = s_all
            tok[b, 29:31] = ngram[1:]
            tok[b, s_all - 502 : s_all - 499] = ngram
        elif case == 3:
            plen[b] = 2 + (b // PROBE_CASES) % 3
            tok[b, 0:3] = ngram
            pre[b, 98:101] = ngram
        elif case == 4:
            step[b] = 1
            pre[b, 1] = 3
            tok[b, 10] = 3
        else:
            pre[b, 148:151] = ngram
    lens = torch.ones(batch, dtype=torch.int32)
    return Batch(
        token_ids_all=tok,
        prompt_lens=plen,
        pre_ids=pre,
        step_idx=step,
        draft_token_num=lens.clone(),
        draft_tokens=ints(10, 10_000, batch, 7),
        seq_lens_this_time=lens,
        seq_lens_decoder=torch.ones(batch, dtype=torch.int32),
        max_dec_len=torch.full((batch,), 1 << 40, dtype=torch.int64),
        max_ngram_size=3,
        min_ngram_size=1,
        max_draft_tokens=5,
        threshold=1 << 40,
    )


def probe_edge_expected(batch: Batch) -> list[list[int]]:
    """The tokens each row of ``probe_edge_batch`` must get, by its case (read off the inputs)."""
    want = []
    for b in range(batch.batch_size):
        case, plen = b % PROBE_CASES, int(batch.prompt_lens[b])
        tok, pre = batch.token_ids_all[b].tolist(), batch.pre_ids[b].tolist()
        if case == 0 or (case == 3 and plen < 4):
            want.append(pre[101:106])
        elif case == 1:
            want.append(tok[21:26])
        elif case == 2:
            e = plen - 500
            want.append(tok[e + 1 : e + 6])
        elif case == 3:
            want.append(tok[3:4])
        elif case == 4:
            want.append(tok[11:16])
        else:
            want.append(pre[151:156])
    return want
