"""Seeded random batches that hit every edge of SPEC §1.3 on purpose.

A ``Recipe`` is a set of switches; each switch forces one edge case (planted repeats, a match
at the very end of a haystack, threshold pressure or its exact edge, MTP drafts, inactive rows,
exhausted budgets, a decoder count that disagrees, -1 runs, short generations, empty prompts,
``pad_to_max``, huge batches, long prompts). ``generate(recipe, seed)`` is deterministic in
``seed``, so any failing batch is reproduced from the (recipe, seed) pair it prints.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

import torch

from refimpl.batch import Batch, make_batch
from refimpl.core import hybrid_mtp_ngram_lists

NO_THRESHOLD = 2**62


@dataclass(frozen=True)
class Recipe:
    """Switches for one family of batches. Probabilities are per row unless noted."""

    name: str
    batch_size: tuple[int, int] = (1, 12)
    prompt_len: tuple[int, int] = (0, 48)
    generated_len: tuple[int, int] = (1, 40)  # step_idx + 1
    vocab: tuple[int, int] = (2, 10)  # small vocabularies make accidental matches common
    max_draft_tokens: tuple[int, int] = (1, 8)
    max_ngram_size: tuple[int, int] = (1, 5)
    plant: float = 0.6  # copy the row's own tail n-gram into a haystack, maybe several times
    end_match: float = 0.15  # a window that ends exactly at the end of a haystack
    mtp_drafts: float = 0.5  # ori > 1
    inactive: float = 0.1  # ori == 0
    exhausted: float = 0.1  # budget <= 0 (ori >= K + 1 or max_dec_len reached)
    dec_len_limit: float = 0.15  # max_dec_len caps the budget below K - ori + 1
    decoder_disagrees: float = 0.05  # seq_lens_decoder > 0 does not match ori > 0
    minus_one_runs: float = 0.1  # runs of -1 (padding left by preemption) in pre_ids and prompt
    short_step: float = 0.1  # step_idx < max_ngram_size
    empty_prompt: float = 0.05  # prompt_lens == 0
    threshold: str = "loose"  # loose | pressure | edge | unbounded
    pad_to_max: float = 0.3  # per batch
    column_shapes: float = 0.3  # per batch: [B, 1] for prompt_lens, step_idx, max_dec_len
    poison: bool = True  # unread cells hold the row's n-gram and a continuation


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("mixed"),
        Recipe("end_match", end_match=0.8, plant=0.3),
        Recipe("priority", plant=1.0, vocab=(3, 6), max_ngram_size=(2, 5)),
        Recipe("threshold_pressure", threshold="pressure", batch_size=(2, 24)),
        Recipe("threshold_edge", threshold="edge", batch_size=(2, 24)),
        Recipe(
            "active_count",
            threshold="edge",
            decoder_disagrees=0.4,
            inactive=0.3,
            exhausted=0.3,
            batch_size=(3, 24),
        ),
        Recipe("minus_one", minus_one_runs=0.7, vocab=(2, 4)),
        Recipe("short_rows", short_step=0.6, empty_prompt=0.4, generated_len=(1, 6)),
        Recipe(
            "large_batch",
            batch_size=(1100, 1400),
            prompt_len=(0, 12),
            generated_len=(1, 10),
            threshold="unbounded",
        ),
        Recipe(
            "large_batch_pressure",
            batch_size=(1100, 1400),
            prompt_len=(0, 12),
            generated_len=(1, 10),
            threshold="edge",
        ),
        # Large shapes for the full profile (and GPU runs).
        Recipe(
            "batch_2048",
            batch_size=(2048, 2048),
            prompt_len=(0, 64),
            generated_len=(1, 32),
            threshold="pressure",
        ),
        Recipe(
            "batch_8192",
            batch_size=(8192, 8192),
            prompt_len=(0, 32),
            generated_len=(1, 16),
            threshold="unbounded",
        ),
        Recipe(
            "long_prompt_128k",
            batch_size=(1, 1),
            prompt_len=(131072, 131072),
            generated_len=(256, 4096),
            vocab=(5000, 30000),
            inactive=0.0,
            exhausted=0.0,
            poison=False,
        ),
        Recipe(
            "wide_256x16k",
            batch_size=(256, 256),
            prompt_len=(16384, 16384),
            generated_len=(64, 1024),
            vocab=(2000, 30000),
            threshold="unbounded",
            poison=False,
        ),
    )
}

QUICK_PLAN: dict[str, int] = {
    "mixed": 250,
    "end_match": 80,
    "priority": 80,
    "threshold_pressure": 80,
    "threshold_edge": 120,
    "active_count": 80,
    "minus_one": 40,
    "short_rows": 40,
    "large_batch": 1,
    "large_batch_pressure": 1,
}
FULL_PLAN: dict[str, int] = {
    **{name: count * 5 for name, count in QUICK_PLAN.items() if not name.startswith("large")},
    "large_batch": 4,
    "large_batch_pressure": 4,
    "batch_2048": 2,
    "batch_8192": 2,
    "long_prompt_128k": 3,
    "wide_256x16k": 1,
}
PLANS = {"quick": QUICK_PLAN, "full": FULL_PLAN}


def case_seed(base_seed: int, recipe: str, index: int) -> int:
    """A stable 32-bit seed per (base seed, recipe, index); Python's hash() is salted per process."""
    digest = hashlib.sha256(f"{base_seed}:{recipe}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generate(recipe: Recipe | str, seed: int) -> Batch:
    """The batch for ``recipe`` and ``seed``; the same pair always gives the same batch."""
    if isinstance(recipe, str):
        recipe = RECIPES[recipe]
    return _Generator(recipe, random.Random(seed)).build(seed)


@dataclass
class _Row:
    prompt: list[int]
    generated: list[int]
    draft: list[int]
    decoder: int
    max_dec_len: int


class _Generator:
    def __init__(self, recipe: Recipe, rng: random.Random):
        self.r = recipe
        self.rng = rng

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def span(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(bounds[0], bounds[1])

    def tokens(self, count: int, vocab: int) -> list[int]:
        return self.rng.choices(range(vocab), k=count)

    def build(self, seed: int) -> Batch:
        r, rng = self.r, self.rng
        k = self.span(r.max_draft_tokens)
        max_n = self.span(r.max_ngram_size)
        min_n = rng.randint(1, max_n)
        batch = self.span(r.batch_size)
        width = k + 1 + rng.randint(0, 3)
        rows = [self.row(k, min_n, max_n, width) for _ in range(batch)]
        poison_room = max_n + k + 2 if r.poison else 0
        built = make_batch(
            [row.prompt for row in rows],
            [row.generated for row in rows],
            [row.draft for row in rows],
            [row.decoder for row in rows],
            [row.max_dec_len for row in rows],
            max_ngram_size=max_n,
            min_ngram_size=min_n,
            max_draft_tokens=k,
            threshold=1024,
            pad_to_max=self.chance(r.pad_to_max),
            prompt_capacity=max(len(row.prompt) for row in rows) + poison_room + rng.randint(0, 2),
            generated_capacity=max(len(row.generated) for row in rows)
            + poison_room
            + rng.randint(0, 2),
            draft_width=width,
            column_shapes=self.chance(r.column_shapes),
            recipe=r.name,
            seed=seed,
        )
        if r.poison:
            self.poison(built, rows)
        built.threshold = self.threshold(built)
        return built

    def row(self, k: int, min_n: int, max_n: int, width: int) -> _Row:
        r, rng = self.r, self.rng
        vocab = self.span(r.vocab)
        plen = 0 if self.chance(r.empty_prompt) else self.span(r.prompt_len)
        if self.chance(r.short_step):
            glen = rng.randint(1, max_n)  # step_idx = glen - 1 < max_n
        else:
            glen = self.span(r.generated_len)
        prompt = self.tokens(plen, vocab)
        generated = self.tokens(glen, vocab)
        if self.chance(r.minus_one_runs):
            self.minus_one_run(generated)
            if prompt and self.chance(0.5):
                self.minus_one_run(prompt)

        n = rng.randint(min_n, max_n)
        if self.chance(r.plant):
            for _ in range(rng.randint(1, 3)):
                self.plant(prompt, generated, n)
        if self.chance(r.end_match):
            self.plant_at_end(prompt, generated, n)

        step = glen - 1
        if self.chance(r.inactive):
            ori = 0
        elif self.chance(r.exhausted):
            ori = rng.randint(k + 1, width)  # ori >= K + 1: budget <= 0
        elif self.chance(r.mtp_drafts):
            ori = rng.randint(2, k + 1) if k >= 1 else 1
        else:
            ori = 1
        # The draft starts with the last target token followed by MTP drafts; engines keep
        # these equal to the tail of pre_ids, so do we when the row is long enough.
        draft = generated[-ori:] if 0 < ori <= glen else self.tokens(ori, vocab)

        if ori > 0 and self.chance(r.exhausted):
            max_dec_len = step + 1 - rng.randint(0, 2)  # max_dec_len - step - 1 <= 0
        elif self.chance(r.dec_len_limit):
            max_dec_len = step + 1 + rng.randint(1, max(k, 1))
        else:
            max_dec_len = rng.choice([512, 4096, step + 2 + 2 * k])

        active = ori > 0
        if self.chance(r.decoder_disagrees):
            active = not active
        decoder = plen + step + 1 if active else 0
        if active and decoder == 0:
            decoder = 1
        return _Row(prompt, generated, draft, decoder, max_dec_len)

    def minus_one_run(self, seq: list[int]) -> None:
        length = self.rng.randint(1, max(1, len(seq) // 2))
        start = self.rng.randint(0, len(seq) - length)
        seq[start : start + length] = [-1] * length

    def plant(self, prompt: list[int], generated: list[int], n: int) -> None:
        """Copy the tail n-gram into the prompt or the generated haystack, not overlapping the tail."""
        glen = len(generated)
        if n > glen:
            return
        tail = generated[glen - n :]
        if self.chance(0.5) and len(prompt) >= n:
            pos = self.rng.randint(0, len(prompt) - n)
            prompt[pos : pos + n] = tail
        elif glen - n - n >= 0:
            pos = self.rng.randint(0, glen - n - n)  # window ends before the tail starts
            generated[pos : pos + n] = tail

    def plant_at_end(self, prompt: list[int], generated: list[int], n: int) -> None:
        """A window ending at the very end of a haystack: a match with an empty continuation.

        In the prompt the tail n-gram is copied to its last n cells. In the generated haystack
        (which stops before pre_ids[step_idx]) a constant run of n + 1 tokens at the end makes
        the window ending at step_idx - 1 equal the n-gram.
        """
        glen = len(generated)
        if n > glen:
            return
        if self.chance(0.5) and len(prompt) >= n:
            prompt[len(prompt) - n :] = generated[glen - n :]
        elif glen >= n + 1:
            generated[glen - n - 1 :] = [generated[-1]] * (n + 1)

    def poison(self, batch: Batch, rows: list[_Row]) -> None:
        """Fill cells the op must never read with the row's n-gram plus a continuation.

        An implementation that reads past prompt_lens or past step_idx then finds a match that
        the definition does not, and the comparison catches it.
        """
        n = batch.max_ngram_size
        for b, row in enumerate(rows):
            bait = row.generated[-n:] + [9_999_001, 9_999_002, 9_999_003]
            plen, glen = len(row.prompt), len(row.generated)
            room = batch.token_ids_all.shape[1] - plen
            batch.token_ids_all[b, plen : plen + min(room, len(bait))] = _tensor(bait[:room])
            room = batch.pre_ids.shape[1] - glen
            batch.pre_ids[b, glen : glen + min(room, len(bait))] = _tensor(bait[:room])

    def threshold(self, batch: Batch) -> int:
        mode = self.r.threshold
        if mode == "unbounded":
            return NO_THRESHOLD
        if mode == "loose":
            return self.rng.choice([1024, 1024, NO_THRESHOLD])
        checks = threshold_checks(batch)
        if not checks:
            return self.rng.choice([0, 1, 2, 1024])
        if mode == "pressure":
            low = min(x for _, x, _ in checks)
            high = max(y for _, _, y in checks)
            return self.rng.randint(max(0, low - 2), high + 1)
        # mode == "edge": one of the four exact edges of one row's two threshold tests.
        _, x, y = self.rng.choice(checks)
        return self.rng.choice([x + 1, x + 2, y, y - 1])


def threshold_checks(batch: Batch) -> list[tuple[int, int, int]]:
    """(row, total + unprocessed, total + budget + unprocessed) per row that reaches the threshold
    tests, computed with no threshold.

    Until the first row at which a threshold T bites, every row's final count is the same as with
    no threshold; so choosing T = X + 1 or X + 2 (X = total + unprocessed of some row) or T = Y or
    Y - 1 (Y = X + budget) lands the first biting row exactly on an edge of SPEC §1.3's tests.
    """
    lens = batch.seq_lens_this_time.tolist()
    final = list(lens)
    hybrid_mtp_ngram_lists(
        [batch.token_ids_all[b, : int(p)].tolist() for b, p in enumerate(_col(batch.prompt_lens))],
        [batch.pre_ids[b, : int(s) + 1].tolist() for b, s in enumerate(_col(batch.step_idx))],
        _col(batch.step_idx),
        batch.draft_tokens.tolist(),
        final,
        batch.seq_lens_decoder.tolist(),
        _col(batch.max_dec_len),
        batch.max_ngram_size,
        batch.min_ngram_size,
        batch.max_draft_tokens,
        NO_THRESHOLD,
        False,
    )
    step, dec_len = _col(batch.step_idx), _col(batch.max_dec_len)
    unprocessed = sum(1 for d in batch.seq_lens_decoder.tolist() if d > 0)
    checks, prefix = [], 0
    for b, ori in enumerate(lens):
        budget = min(batch.max_draft_tokens - ori + 1, dec_len[b] - step[b] - 1)
        if ori > 0 and budget > 0:
            unprocessed -= 1
            x = prefix + ori + unprocessed
            checks.append((b, x, x + budget))
        prefix += final[b]
    return checks


def with_threshold(batch: Batch, threshold: int) -> Batch:
    return replace(batch.clone(), threshold=threshold)


def _col(t: torch.Tensor) -> list[int]:
    return t.reshape(-1).tolist()


def _tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)
