"""The definition of hybrid_mtp_ngram (SPEC §1.3-§1.4) in plain Python.

This is the oracle. It is written to be checked line by line against SPEC §1.3, not to be
fast: every other implementation is compared with it. It works on plain lists of ints; the
torch adapter in ``refimpl.op`` converts tensors to and from this form.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_continuation(
    haystack: Sequence[int], ngram: Sequence[int], budget: int
) -> list[int] | None:
    """Tokens that follow the leftmost window of ``haystack`` equal to ``ngram``.

    A window only counts if at least one token follows it (``i + n < len(haystack)``): a match
    with an empty continuation is not a match, and the caller keeps searching.
    Returns at most ``budget`` tokens, or None when there is no such window.
    """
    n = len(ngram)
    ngram = list(ngram)
    for i in range(len(haystack) - n):  # i + n < len(haystack)
        if list(haystack[i : i + n]) == ngram:
            return list(haystack[i + n : min(i + n + budget, len(haystack))])
    return None


def ngram_draft(
    prompt: Sequence[int],
    generated: Sequence[int],
    step_idx: int,
    budget: int,
    max_ngram_size: int,
    min_ngram_size: int,
) -> list[int]:
    """The n-gram tokens for one row: largest n first, then the prompt before the generated text.

    ``generated`` is ``pre_ids[b]`` and is valid through ``step_idx`` inclusive. The ngram is its
    last n valid tokens; the generated haystack stops before ``generated[step_idx]``.
    """
    # SPEC §1.3 skips every n with step_idx < n, and a window of n tokens with a token after it
    # needs a haystack longer than n. So the loop starts at the longest n that can match: the
    # same result, and a huge max_ngram_size (2**63 - 1) costs nothing.
    longest_haystack = max(len(prompt), step_idx)  # the generated one is generated[:step_idx]
    longest = min(max_ngram_size, step_idx, longest_haystack - 1)
    for n in range(longest, min_ngram_size - 1, -1):
        ngram = generated[step_idx - n + 1 : step_idx + 1]
        for haystack in (prompt, generated[:step_idx]):
            found = find_continuation(haystack, ngram, budget)
            if found is not None:
                return found
    return []


def hybrid_mtp_ngram_lists(
    prompts: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    step_idx: Sequence[int],
    draft_tokens: list[list[int]],
    seq_lens_this_time: list[int],
    seq_lens_decoder: Sequence[int],
    max_dec_len: Sequence[int],
    max_ngram_size: int,
    min_ngram_size: int,
    max_draft_tokens: int,
    threshold: int = 1024,
    pad_to_max: bool = False,
) -> None:
    """SPEC §1.3 (and §1.4 when ``pad_to_max``), in place on ``draft_tokens`` and ``seq_lens_this_time``.

    ``prompts[b]`` is ``token_ids_all[b, :prompt_lens[b]]``; ``generated[b]`` is ``pre_ids[b]``
    (at least through ``step_idx[b]``). Rows are processed in order, and a later row sees the
    final ``seq_lens_this_time`` of the earlier rows.
    """
    batch = len(seq_lens_this_time)
    unprocessed = sum(1 for d in seq_lens_decoder if d > 0)
    earlier = 0  # seq_lens_this_time[0] + ... + seq_lens_this_time[b-1], each final
    for b in range(batch):
        if b > 0:
            earlier += seq_lens_this_time[b - 1]  # row b-1 is done: its value is final
        ori = seq_lens_this_time[b]
        budget = min(max_draft_tokens - ori + 1, max_dec_len[b] - step_idx[b] - 1)
        if ori == 0 or budget <= 0:
            continue  # `unprocessed` is deliberately not decremented here
        unprocessed -= 1
        total = earlier + ori  # = sum(seq_lens_this_time[: b + 1]): earlier rows final, row b ori
        if total + budget + unprocessed > threshold:
            budget = min(budget, threshold - total - unprocessed)
        if total + unprocessed >= threshold - 1:
            continue
        tokens = ngram_draft(
            prompts[b], generated[b], step_idx[b], budget, max_ngram_size, min_ngram_size
        )
        draft_tokens[b][ori : ori + len(tokens)] = tokens
        seq_lens_this_time[b] = ori + len(tokens)

    if pad_to_max:
        full = max_draft_tokens + 1
        for b in range(batch):
            length = seq_lens_this_time[b]
            if 0 < length < full:
                draft_tokens[b][length:full] = [draft_tokens[b][length - 1]] * (full - length)
                seq_lens_this_time[b] = full
