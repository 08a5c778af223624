"""The CUDA kernel's threshold pass, modelled in Python and checked against the oracle on CPU.

The kernel does not run SPEC §1.3's loop. It computes uncut counts, prefix sums, and the first
"affected" row b*, and cuts there (the proof is at the top of csrc/ngram_cuda_kernel.cu). The
rows are split into tiles, one per finaliser block, each getting its prefix sums from a
decoupled look-back; no row looks for b*: every affected row gets the exact threshold rule with
the uncut totals, which gives the rows after b* nothing. This test runs that exact formulation, row by row and tile by tile, against
the oracle on threshold-heavy batches, so the argument is tested on every machine, GPU or not.
"""

from __future__ import annotations

import random

import pytest

from refimpl.core import hybrid_mtp_ngram_lists, ngram_draft
from refimpl.generate import case_seed, generate

SEED = 20261127


def look_back_prefix(aggregates, inclusive, tile, rng, mutation=None):
    """Exclusive prefix sums (S, E) of `tile`: aggregates walked back to an inclusive prefix,
    as the kernel's look-back does (which tile's inclusive prefix is there in time is random)."""
    stop = rng.randint(-1, tile - 1)
    s, e = inclusive[stop] if stop >= 0 else (0, 0)
    for t in range(stop + 1, tile):
        s, e = s + aggregates[t][0], e + aggregates[t][1]
    if mutation == "prefix_without_eligible":  # a look-back that forgets earlier tiles' E
        e = 0
    return s, e


def parallel_formulation(prompts, generated, steps, drafts, lens, dec, max_dec, max_n, min_n, k,
                         threshold, tile_rows=None, rng=None, mutation=None):  # fmt: skip
    """Uncut counts -> prefix sums per tile -> the exact rule on affected rows. Mirrors
    finalise_tile: no row looks for b*; every affected row (b* and all after it) gets the
    threshold rule with the uncut totals, which leaves nothing to the rows after b*.
    Returns b* (the first affected row), or None.
    """
    batch = len(lens)
    u0 = sum(1 for d in dec if d > 0)
    rows = []
    for b in range(batch):
        ori = lens[b]
        budget = min(k - ori + 1, max_dec[b] - steps[b] - 1)
        eligible = ori != 0 and budget > 0
        # The match does not depend on the budget: ask for everything, cut to the budget later.
        cont = (
            ngram_draft(prompts[b], generated[b], steps[b], 1 << 40, max_n, min_n)
            if eligible
            else []
        )
        um = min(len(cont), budget) if eligible else 0
        rows.append((ori, budget, eligible, cont, um))
    tile_rows = tile_rows or max(batch, 1)
    tiles = [rows[t : t + tile_rows] for t in range(0, batch, tile_rows)]
    aggregates = [
        (sum(ori + um for ori, _, _, _, um in t), sum(el for _, _, el, _, _ in t)) for t in tiles
    ]
    inclusive, s, e = [], 0, 0
    for a_s, a_e in aggregates:
        s, e = s + a_s, e + a_e
        inclusive.append((s, e))
    rng = rng or random.Random(0)
    b_star = None
    for t, tile in enumerate(tiles):
        run_c, run_e = look_back_prefix(aggregates, inclusive, t, rng, mutation)
        for i, (ori, budget, eligible, cont, um) in enumerate(tile):
            b = t * tile_rows + i
            run_e += eligible
            total, unproc = run_c + ori, u0 - run_e
            run_c += ori + um
            if not eligible:
                continue
            m = um
            if total + unproc >= threshold - 1 or total + unproc + um > threshold:  # affected
                b_star = b if b_star is None else b_star
                cut = budget
                if total + budget + unproc > threshold:
                    cut = min(budget, threshold - total - unproc)
                m = 0 if total + unproc >= threshold - 1 else min(cut, um)
                if mutation == "clip_only":  # the clip without the skip test
                    m = min(cut, um)
            drafts[b][ori : ori + m] = cont[:m]
            lens[b] = ori + m
    return b_star


def _lists(batch):
    lens = batch.seq_lens_this_time.tolist()
    steps = batch.step_idx.reshape(-1).tolist()
    plen = batch.prompt_lens.reshape(-1).tolist()
    prompts = [
        batch.token_ids_all[b, : plen[b]].tolist() if lens[b] else [] for b in range(len(lens))
    ]
    gen = [batch.pre_ids[b, : steps[b] + 1].tolist() if lens[b] else [] for b in range(len(lens))]
    return (prompts, gen, steps, batch.draft_tokens.tolist(), lens,
            batch.seq_lens_decoder.tolist(), batch.max_dec_len.reshape(-1).tolist())  # fmt: skip


@pytest.mark.parametrize("tile_rows", [None, 1, 2, 3, 7])
@pytest.mark.parametrize(
    "recipe", ["threshold_pressure", "threshold_edge", "active_count", "mixed"]
)
def test_prefix_sum_threshold_pass_equals_the_sequential_definition(recipe, tile_rows):
    rng = random.Random(SEED)
    checked = with_cut = 0
    for i in range(60):
        seed = case_seed(SEED, recipe, i)
        batch = generate(recipe, seed)
        if batch.seq_lens_this_time.min() < 0:
            continue
        want = _lists(batch)
        got = _lists(batch)
        args = (batch.max_ngram_size, batch.min_ngram_size, batch.max_draft_tokens)
        hybrid_mtp_ngram_lists(*want, *args, threshold=batch.threshold)
        b_star = parallel_formulation(
            *got, *args, threshold=batch.threshold, tile_rows=tile_rows, rng=rng
        )
        assert (want[3], want[4]) == (got[3], got[4]), (
            f"recipe={recipe} seed={seed} tile={tile_rows}"
        )
        checked += 1
        with_cut += b_star is not None and b_star < batch.batch_size - 1
    print(
        f"recipe={recipe} tile_rows={tile_rows} base seed={SEED}: {checked} batches agree, "
        f"{with_cut} cut before the end"
    )
    assert checked >= 50
    if recipe.startswith("threshold"):
        assert with_cut >= 10  # the argument is exercised, not vacuous


@pytest.mark.parametrize("mutation", ["prefix_without_eligible", "clip_only"])
def test_mutations_of_the_formulation_are_caught(mutation):
    """The check above can fail: two plausible mistakes differ from the oracle on these batches."""
    rng = random.Random(SEED)
    caught = 0
    for i in range(40):
        seed = case_seed(SEED, "threshold_pressure", i)
        batch = generate("threshold_pressure", seed)
        want, got = _lists(batch), _lists(batch)
        args = (batch.max_ngram_size, batch.min_ngram_size, batch.max_draft_tokens)
        hybrid_mtp_ngram_lists(*want, *args, threshold=batch.threshold)
        parallel_formulation(
            *got, *args, threshold=batch.threshold, tile_rows=3, rng=rng, mutation=mutation
        )
        caught += (want[3], want[4]) != (got[3], got[4])
    print(f"mutation={mutation} base seed={SEED}: caught on {caught} of 40 batches")
    assert caught >= 5
