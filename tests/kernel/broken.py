"""Deliberately broken hybrid_mtp_ngram implementations, one per bug class real engines shipped.

Each is a complete implementation with the op's signature and exactly one bug, so
``specgate kernel --impl tests.kernel.broken:<name>`` must fail. ``test_suite_catches_bugs``
runs the kernel suite against every one of them and checks that it does.

They share one deliberately independent implementation (not the oracle's code) with a switch
per bug; the switch named in each wrapper is the only difference from a correct version.
"""

from __future__ import annotations

import torch

from refimpl.validate import check_no_overlap, check_structure, check_values

ROW_LIMIT = 1024  # the batch limit some kernels had: one block of 1024 threads


def _search(haystack: list[int], ngram: list[int], budget: int, bugs: set[str]) -> list[int] | None:
    n = len(ngram)
    starts = range(len(haystack) - n + 1)
    if "rightmost_match" in bugs:
        starts = reversed(starts)
    for i in starts:
        if haystack[i : i + n] != ngram:
            continue
        if i + n == len(haystack):  # empty continuation
            if "empty_continuation_stops" in bugs:
                return []
            continue
        return haystack[i + n : i + n + budget]
    return None


def _draft_row(prompt, generated, step, budget, max_n, min_n, bugs) -> list[int]:
    for n in range(min(max_n, step), min_n - 1, -1):  # n > step is skipped (SPEC §1.3)
        if "ngram_one_early" in bugs:
            if step - n < 0:
                continue
            ngram = generated[step - n : step]
        else:
            ngram = generated[step - n + 1 : step + 1]
        gen_haystack = (
            generated[: step + 1] if "haystack_includes_last" in bugs else generated[:step]
        )
        for haystack in (prompt, gen_haystack):
            found = _search(haystack, ngram, budget, bugs)
            if found is not None:
                return found
    return []


def _hybrid(bugs: set[str], *args, threshold: int = 1024, pad_to_max: bool = False) -> None:
    (token_ids_all, prompt_lens, pre_ids, step_idx, _draft_token_num, draft_tokens,
     seq_lens_this_time, seq_lens_decoder, max_dec_len, max_n, min_n, k) = args  # fmt: skip
    names = ("token_ids_all", "prompt_lens", "pre_ids", "step_idx", "draft_token_num",
             "draft_tokens", "seq_lens_this_time", "seq_lens_decoder", "max_dec_len")  # fmt: skip
    shapes = check_structure(
        dict(zip(names, args[:9], strict=True)),
        {
            "max_ngram_size": max_n,
            "min_ngram_size": min_n,
            "max_draft_tokens": k,
            "threshold": threshold,
            "pad_to_max": pad_to_max,
        },
    )
    check_no_overlap(dict(zip(names, args[:9], strict=True)))
    check_values(shapes, prompt_lens, step_idx, seq_lens_this_time)
    plens = prompt_lens.reshape(-1).tolist()
    steps = step_idx.reshape(-1).tolist()
    dec_lens = max_dec_len.reshape(-1).tolist()
    lens = seq_lens_this_time.tolist()
    original = list(lens)
    drafts = draft_tokens.tolist()

    counted = lens if "active_from_this_time" in bugs else seq_lens_decoder.tolist()
    unprocessed = sum(1 for v in counted if v > 0)
    rows = (
        range(min(len(lens), ROW_LIMIT))
        if "rows_beyond_1024_untouched" in bugs
        else range(len(lens))
    )
    for b in rows:
        ori = lens[b]
        budget = min(k - ori + 1, dec_lens[b] - steps[b] - 1)
        if ori == 0 or budget <= 0:
            continue
        unprocessed -= 1
        counts = original if "original_counts" in bugs else lens
        total = sum(counts[:b]) + ori
        if total + budget + unprocessed > threshold:
            budget = min(budget, threshold - total - unprocessed)
        edge = threshold if "threshold_edge_off_by_one" in bugs else threshold - 1
        if total + unprocessed >= edge:
            continue
        prompt_end = shapes.prompt_capacity if "prompt_reads_past_len" in bugs else plens[b]
        tokens = _draft_row(
            token_ids_all[b, :prompt_end].tolist(),
            pre_ids[b].tolist(),
            steps[b],
            budget,
            max_n,
            min_n,
            bugs,
        )
        drafts[b][ori : ori + len(tokens)] = tokens
        lens[b] = ori + len(tokens)

    if pad_to_max:
        for b, length in enumerate(lens):
            if 0 < length < k + 1:
                drafts[b][length : k + 1] = [drafts[b][length - 1]] * (k + 1 - length)
                lens[b] = k + 1
    draft_tokens.copy_(torch.tensor(drafts, dtype=draft_tokens.dtype))
    seq_lens_this_time.copy_(torch.tensor(lens, dtype=seq_lens_this_time.dtype))


def _broken(bug: str):
    def impl(*args, threshold: int = 1024, pad_to_max: bool = False) -> None:
        _hybrid({bug} - {"none"}, *args, threshold=threshold, pad_to_max=pad_to_max)

    impl.__name__ = bug
    impl.__doc__ = f"hybrid_mtp_ngram with one bug: {bug}"
    return impl


# The bugs the foundation issue names, then a few more that real kernels have had.
BUGS = (
    "empty_continuation_stops",  # a match with an empty continuation ends the search
    "threshold_edge_off_by_one",  # `total + unprocessed >= threshold` instead of `threshold - 1`
    "active_from_this_time",  # unprocessed counted from seq_lens_this_time, not seq_lens_decoder
    "rightmost_match",  # the last window instead of the leftmost
    "haystack_includes_last",  # the generated haystack includes pre_ids[step_idx]
    "ngram_one_early",  # the n-gram ends at step_idx - 1
    "rows_beyond_1024_untouched",  # one block of 1024 rows, the rest never processed
    "original_counts",  # total sums earlier rows' counts before their n-gram tokens
    "prompt_reads_past_len",  # the prompt haystack runs to the end of token_ids_all
)

empty_continuation_stops = _broken("empty_continuation_stops")
threshold_edge_off_by_one = _broken("threshold_edge_off_by_one")
active_from_this_time = _broken("active_from_this_time")
rightmost_match = _broken("rightmost_match")
haystack_includes_last = _broken("haystack_includes_last")
ngram_one_early = _broken("ngram_one_early")
rows_beyond_1024_untouched = _broken("rows_beyond_1024_untouched")
original_counts = _broken("original_counts")
prompt_reads_past_len = _broken("prompt_reads_past_len")
# The same implementation with no bug switched on: proves the switches are the only difference.
no_bug = _broken("none")
