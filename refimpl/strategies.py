"""Hypothesis strategies for hybrid_mtp_ngram batches.

Unlike ``refimpl.generate``, these draw every token and length directly, so hypothesis can
shrink a failure to a minimal batch: few rows, short rows, small tokens, threshold 1024.
Small vocabularies (including -1) make matches, end-of-haystack windows and ties common.
"""

from __future__ import annotations

from hypothesis import strategies as st

from refimpl.batch import Batch, make_batch


@st.composite
def hybrid_batches(
    draw: st.DrawFn,
    max_batch: int = 5,
    max_len: int = 14,
    max_vocab: int = 4,
    max_draft_tokens: int = 6,
) -> Batch:
    k = draw(st.integers(1, max_draft_tokens), label="max_draft_tokens")
    max_n = draw(st.integers(1, 4), label="max_ngram_size")
    min_n = draw(st.integers(1, max_n), label="min_ngram_size")
    width = k + 1 + draw(st.integers(0, 2), label="extra draft columns")
    vocab = draw(st.integers(1, max_vocab), label="vocab")
    token = st.integers(-1, vocab - 1)
    rows = draw(st.integers(1, max_batch), label="batch size")

    prompts, generated, drafts, decoder, dec_len = [], [], [], [], []
    for _ in range(rows):
        prompts.append(draw(st.lists(token, max_size=max_len)))
        gen = draw(st.lists(token, min_size=1, max_size=max_len))
        generated.append(gen)
        ori = draw(st.integers(0, width))
        if 0 < ori <= len(gen):
            drafts.append(gen[-ori:])
        else:
            drafts.append(draw(st.lists(token, min_size=ori, max_size=ori)))
        disagrees = draw(st.sampled_from([False, False, False, True]), label="decoder disagrees")
        active = (ori > 0) != disagrees
        decoder.append(len(gen) if active else 0)
        step = len(gen) - 1
        dec_len.append(draw(st.one_of(st.just(512), st.integers(step - 1, step + 2 * k + 1))))

    threshold = draw(
        st.one_of(st.just(1024), st.integers(0, rows * (width + 2))), label="threshold"
    )
    return make_batch(
        prompts,
        generated,
        drafts,
        decoder,
        dec_len,
        max_ngram_size=max_n,
        min_ngram_size=min_n,
        max_draft_tokens=k,
        threshold=threshold,
        pad_to_max=draw(st.booleans(), label="pad_to_max"),
        draft_width=width,
        prompt_capacity=max_len + 3,
        generated_capacity=max_len + 3,
        column_shapes=draw(st.booleans(), label="column shapes"),
        recipe="hypothesis",
    )
