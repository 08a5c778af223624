"""The batch generator reaches every SPEC §1.3 edge on purpose, not by luck.

For each edge, the recipe built for it must produce it in a large share of its quick-profile
batches. If a generator change silently stops producing an edge, this fails.
"""

from __future__ import annotations

import pytest

from refimpl import PLANS, RECIPES, case_seed, generate
from refimpl.generate import NO_THRESHOLD, threshold_checks

SEED = 7


def _batches(recipe: str, count: int | None = None):
    count = count or PLANS["quick"][recipe]
    return [generate(recipe, case_seed(SEED, recipe, i)) for i in range(count)]


def _rows(batch):
    plen = batch.prompt_lens.reshape(-1).tolist()
    step = batch.step_idx.reshape(-1).tolist()
    for b in range(batch.batch_size):
        yield (
            b,
            batch.token_ids_all[b, : plen[b]].tolist(),
            batch.pre_ids[b, : step[b] + 1].tolist(),
            int(batch.seq_lens_this_time[b]),
        )


def _share(batches, predicate) -> float:
    return sum(1 for b in batches if predicate(b)) / len(batches)


def _has_window(haystack, ngram, *, at_end: bool) -> bool:
    n = len(ngram)
    starts = [len(haystack) - n] if at_end else range(len(haystack) - n)
    return any(i >= 0 and haystack[i : i + n] == ngram for i in starts)


def _any_row(batch, predicate) -> bool:
    return any(predicate(batch, *row) for row in _rows(batch))


def _tail_matches(batch, b, prompt, gen, ori, *, at_end):
    sizes = range(batch.min_ngram_size, batch.max_ngram_size + 1)
    return ori > 0 and any(
        len(gen) >= n + 1
        and (
            _has_window(prompt, gen[-n:], at_end=at_end)
            or _has_window(gen[:-1], gen[-n:], at_end=at_end)
        )
        for n in sizes
    )


def test_planted_repeats():
    share = _share(
        _batches("priority"), lambda bt: _any_row(bt, lambda *r: _tail_matches(*r, at_end=False))
    )
    assert share > 0.9, share


def test_matches_at_the_very_end_of_a_haystack():
    share = _share(
        _batches("end_match"), lambda bt: _any_row(bt, lambda *r: _tail_matches(*r, at_end=True))
    )
    assert share > 0.8, share


def _on_edge(batch) -> bool:
    t = batch.threshold
    return any(x in (t - 1, t - 2) or y in (t, t + 1) for _, x, y in threshold_checks(batch))


@pytest.mark.parametrize("recipe", ["threshold_edge", "active_count"])
def test_exact_threshold_edges(recipe):
    assert _share(_batches(recipe), _on_edge) >= 0.8


def test_threshold_pressure_cuts_rows():
    def bites(batch):
        return any(y > batch.threshold for _, _, y in threshold_checks(batch))

    assert _share(_batches("threshold_pressure"), bites) > 0.7


def _lens(batch):
    return batch.seq_lens_this_time.tolist()


def _budgets(batch):
    k, step, dec = (
        batch.max_draft_tokens,
        batch.step_idx.reshape(-1).tolist(),
        batch.max_dec_len.reshape(-1).tolist(),
    )
    return [min(k - ori + 1, dec[b] - step[b] - 1) for b, ori in enumerate(_lens(batch))]


FEATURES = {
    "ori > 1": ("mixed", lambda bt: any(v > 1 for v in _lens(bt))),
    "ori == 0": ("active_count", lambda bt: 0 in _lens(bt)),
    "budget <= 0 on an active row": (
        "active_count",
        lambda bt: any(v > 0 and g <= 0 for v, g in zip(_lens(bt), _budgets(bt), strict=True)),
    ),
    "seq_lens_decoder disagrees": (
        "active_count",
        lambda bt: any(
            (d > 0) != (v > 0) for d, v in zip(bt.seq_lens_decoder.tolist(), _lens(bt), strict=True)
        ),
    ),
    "-1 runs in pre_ids": ("minus_one", lambda bt: _any_row(bt, lambda _b, _i, _p, g, _o: -1 in g)),
    "step_idx < n": (
        "short_rows",
        lambda bt: any(s < bt.max_ngram_size for s in bt.step_idx.reshape(-1).tolist()),
    ),
    "prompt_lens == 0": ("short_rows", lambda bt: 0 in bt.prompt_lens.reshape(-1).tolist()),
    "pad_to_max on": ("mixed", lambda bt: bt.pad_to_max),
    "pad_to_max off": ("mixed", lambda bt: not bt.pad_to_max),
    "[B, 1] argument shapes": ("mixed", lambda bt: bt.step_idx.dim() == 2),
    "B >= 1100 with room under the threshold": (
        "large_batch",
        lambda bt: bt.batch_size >= 1100 and bt.threshold == NO_THRESHOLD,
    ),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_feature_is_produced(feature):
    recipe, predicate = FEATURES[feature]
    share = _share(_batches(recipe), predicate)
    assert share >= (1.0 if recipe.startswith("large") else 0.2), (
        f"{feature}: {share:.2f} of {recipe}"
    )


def test_unread_cells_hold_bait():
    """Past prompt_lens and past step_idx sit the row's own n-gram: reading them changes results."""
    batch = generate("mixed", case_seed(SEED, "mixed", 0))
    n = batch.max_ngram_size
    for b, _prompt, gen, _ori in _rows(batch):
        plen = int(batch.prompt_lens.reshape(-1)[b])
        bait = gen[-n:]
        assert batch.token_ids_all[b, plen : plen + len(bait)].tolist() == bait


def test_full_profile_has_the_large_shapes():
    plan = PLANS["full"]
    sizes = {name: RECIPES[name].batch_size for name in plan}
    assert sizes["batch_8192"] == (8192, 8192) and sizes["batch_2048"] == (2048, 2048)
    assert RECIPES["long_prompt_128k"].prompt_len == (131072, 131072)
    assert RECIPES["wide_256x16k"].batch_size == (256, 256)
    assert sum(plan.values()) >= 3000


def test_same_seed_same_batch():
    a, b = (generate("mixed", 123) for _ in range(2))
    assert all(
        (x == y).all() for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True)
    )
    assert a.threshold == b.threshold
