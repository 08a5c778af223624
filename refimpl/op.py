"""The oracle with the op's exact argument list: torch tensors in, the same tensors mutated.

This thin adapter validates (SPEC §1.5), moves the data to plain lists, runs
``refimpl.core`` and writes the two outputs back in place, so the oracle is interchangeable
with any implementation under test, on any device.
"""

from __future__ import annotations

import torch

from refimpl.core import hybrid_mtp_ngram_lists
from refimpl.validate import check_no_overlap, check_structure, check_values


def _flat(t: torch.Tensor) -> list[int]:
    return t.reshape(-1).tolist()


def hybrid_mtp_ngram(
    token_ids_all: torch.Tensor,
    prompt_lens: torch.Tensor,
    pre_ids: torch.Tensor,
    step_idx: torch.Tensor,
    draft_token_num: torch.Tensor,
    draft_tokens: torch.Tensor,
    seq_lens_this_time: torch.Tensor,
    seq_lens_decoder: torch.Tensor,
    max_dec_len: torch.Tensor,
    max_ngram_size: int,
    min_ngram_size: int,
    max_draft_tokens: int,
    threshold: int = 1024,
    pad_to_max: bool = False,
) -> None:
    """Reference hybrid_mtp_ngram (SPEC §1): extends ``draft_tokens``/``seq_lens_this_time`` in place."""
    tensors = {
        "token_ids_all": token_ids_all,
        "prompt_lens": prompt_lens,
        "pre_ids": pre_ids,
        "step_idx": step_idx,
        "draft_token_num": draft_token_num,
        "draft_tokens": draft_tokens,
        "seq_lens_this_time": seq_lens_this_time,
        "seq_lens_decoder": seq_lens_decoder,
        "max_dec_len": max_dec_len,
    }
    scalars = {
        "max_ngram_size": max_ngram_size,
        "min_ngram_size": min_ngram_size,
        "max_draft_tokens": max_draft_tokens,
        "threshold": threshold,
        "pad_to_max": pad_to_max,
    }
    shapes = check_structure(tensors, scalars)
    check_no_overlap(tensors)
    check_values(shapes, prompt_lens.cpu(), step_idx.cpu(), seq_lens_this_time.cpu())

    lens = _flat(seq_lens_this_time.cpu())
    prompt_len_list = _flat(prompt_lens.cpu())
    step_list = _flat(step_idx.cpu())

    token_cpu = token_ids_all.cpu()
    pre_cpu = pre_ids.cpu()
    # Only active rows are read (SPEC §1.3: inactive rows are neither read nor written).
    prompts = [
        token_cpu[b, : prompt_len_list[b]].tolist() if lens[b] > 0 else []
        for b in range(shapes.batch)
    ]
    generated = [
        pre_cpu[b, : step_list[b] + 1].tolist() if lens[b] > 0 else [] for b in range(shapes.batch)
    ]
    drafts = draft_tokens.cpu().tolist()
    before = list(lens)

    hybrid_mtp_ngram_lists(
        prompts,
        generated,
        step_list,
        drafts,
        lens,
        _flat(seq_lens_decoder.cpu()),
        _flat(max_dec_len.cpu()),
        max_ngram_size,
        min_ngram_size,
        max_draft_tokens,
        threshold,
        pad_to_max,
    )

    changed = [b for b in range(shapes.batch) if lens[b] != before[b]]
    if changed:
        rows = torch.tensor(changed, dtype=torch.long)
        new_rows = torch.tensor([drafts[b] for b in changed], dtype=draft_tokens.dtype)
        draft_tokens.index_copy_(0, rows.to(draft_tokens.device), new_rows.to(draft_tokens.device))
        seq_lens_this_time.copy_(torch.tensor(lens, dtype=seq_lens_this_time.dtype))
