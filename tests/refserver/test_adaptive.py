"""Adaptive drafting: the policy with synthetic costs (a machine where verification grows with
the tokens per row, one where it is nearly flat), and the engine on the real model, whose greedy
output must equal `none` whatever the policy decides."""

from __future__ import annotations

import random

import pytest
import torch

from refserver import adaptive
from refserver.adaptive import AdaptivePolicy, Costs, CostTable, Plan
from refserver.config import SpeculativeConfig
from refserver.mtp import MTPInput, join_mtp_inputs
from refserver.presets import HYBRID, HYBRID_ADAPTIVE
from refserver.sampling import SamplingParams
from tests.refserver import test_engine
from tests.refserver.test_engine import check_invariants, make_engine, run

MS = 1e-3


def costs(verify_ms: dict[int, float], mtp_ms: dict[int, float], rest_ms: float = 0.0) -> Costs:
    c = Costs()
    for t, v in verify_ms.items():
        c.verify.record(t, v * MS)
    for m, v in mtp_ms.items():
        c.mtp.record(m, v * MS)
    c.rest = rest_ms * MS
    return c


# Synthetic machines (no real counterpart: the engine measures the real ones).
STEEP = {t: 40.0 * t for t in range(1, 7)}  # bf16 without matrix units: T tokens ~ T steps
MODERATE = {t: 40.0 + 10.0 * (t - 1) for t in range(1, 7)}  # T tokens ~ 1 + (T-1)/4 steps
FLAT = {t: 40.0 + 2.0 * (t - 1) for t in range(1, 7)}  # one more token is nearly free
MACHINES = {"steep": STEEP, "moderate": MODERATE, "flat": FLAT}


def simulate(
    policy, state, steps: int, accept_all: bool, ngram_finds: bool = True
) -> list[tuple[int, int]]:
    """Drive one request: each step plans, drafts m MTP tokens and (when `ngram_finds`) n-gram
    tokens up to the cap, and all of them are accepted, or none."""
    chosen = []
    for _ in range(steps):
        m, k = policy.best(state)
        chosen.append((m, k))
        drafts = k if ngram_finds else m
        state.drafted(Plan(m, k), room=100, num_drafts=drafts)
        state.observe(drafts if accept_all else 0)
    return chosen


def test_cost_table_fits_a_line_through_each_sizes_median():
    t = CostTable()
    assert t.estimate(3) is None
    t.record(2, 0.010)
    assert t.estimate(4) == pytest.approx(0.020)  # one size timed: proportional
    for seconds in (0.030, 0.030, 0.900):  # a spike among the timings of T = 3
        t.record(3, seconds)
    assert t.medians() == {2: 0.010, 3: 0.030}
    # Line through (2, 10 ms) weight 1 and (3, 30 ms) weight 3: slope 20 ms, through both.
    assert t.estimate(2.5) == pytest.approx(0.020)
    assert t.estimate(5) == pytest.approx(0.070)  # beyond: the same line
    assert t.estimate(1) == pytest.approx(0.005)  # never below half the cheapest median


def test_cost_table_noise_does_not_bend_the_slope():
    """The timings that made the old per-size EMAs non-monotone (session 6: ms by T 2: 31.1,
    4: 29.9, 5: 29.6, 6: 41.7, 7: 45.0, 9: 33.3) give one gentle slope, not the 12 ms jump."""
    t = CostTable()
    for size, ms in {2: 31.1, 4: 29.9, 5: 29.6, 6: 41.7, 7: 45.0, 9: 33.3}.items():
        t.record(size, ms * MS)
    assert t.estimate(6) < t.estimate(9)  # the EMAs had T = 6 dearer than T = 9
    _, slope = t.fit()
    assert 0.0 <= slope < 3 * MS  # a few ms a token, not the 12 ms from T = 5 to 6


def test_cost_table_median_ignores_old_timings():
    t = CostTable()
    for _ in range(adaptive.COST_SAMPLES):
        t.record(4, 0.100)
    for _ in range(adaptive.COST_SAMPLES // 2 + 1):
        t.record(4, 0.020)
    assert t.medians() == {4: 0.020}
    t.record(1, 0.030)  # falling with size: the slope is clamped to 0
    assert t.fit()[1] == 0.0
    assert t.estimate(1) == t.estimate(16)


def test_observe_counts_mtp_and_ngram_positions_separately():
    policy = AdaptivePolicy(K=5, mtp_steps=2, uses_ngram=True)
    st = policy.new_request()
    st.drafted(Plan(2, 5), room=4, num_drafts=3)  # 2 MTP, room for 2 n-gram, 1 found
    assert st.last == (2, 2, 1)
    st.observe(2)
    assert [(r.hits, r.trials) for r in st.mtp] == [(1, 1), (1, 1)]
    after = st.ngram_after  # the n-gram part came after MTP drafts
    assert [(r.hits, r.trials) for r in after.found[:3]] == [(1, 1), (0, 1), (0, 0)]
    assert [(r.hits, r.trials) for r in after.accepted[:2]] == [(0, 1), (0, 0)]  # reached once
    assert all(r.trials == 0 for r in st.ngram_lead.all())
    st.observe(0)  # no draft this step: the positions drift back to the prior
    assert st.mtp[0].hits == pytest.approx(adaptive.IDLE_DECAY)
    st.drafted(Plan(2, 2), room=4, num_drafts=2)
    st.observe(0)  # position 1 tried and rejected, position 2 not reached
    assert st.mtp[0].hits == pytest.approx(adaptive.IDLE_DECAY * adaptive.DECAY)
    assert st.mtp[0].trials == pytest.approx(adaptive.IDLE_DECAY * adaptive.DECAY + 1)
    assert st.mtp[1].trials == pytest.approx(adaptive.IDLE_DECAY**2)


def test_expected_tokens_and_time_follow_the_rates_and_costs():
    policy = AdaptivePolicy(K=3, mtp_steps=1, uses_ngram=True, costs=costs(FLAT, {1: 10}, 5))
    st = policy.new_request()
    p = adaptive.PRIOR_MEAN
    tokens, seconds = policy.expected(st, 1, 3)
    # MTP position 1, then n-gram positions 1..2 (found with the prior, accepted with the prior)
    assert tokens == pytest.approx(1 + p + p * p + p**3)
    assert seconds == pytest.approx((FLAT[1] + 2 * (1 + p + p) + 10 + 5) * MS)
    assert policy.expected(st, 0, 0) == pytest.approx((1.0, (FLAT[1] + 5) * MS))


def test_a_known_lookup_scores_ngram_only_plans_on_what_it_offers():
    policy = AdaptivePolicy(K=3, mtp_steps=1, uses_ngram=True, costs=costs(FLAT, {1: 10}, 5))
    st = policy.new_request()
    p = adaptive.PRIOR_MEAN
    # The lookup offers 1 draft: a cap of 3 verifies 2 tokens and can gain one position only.
    tokens, seconds = policy.expected(st, 0, 3, found=1)
    assert tokens == pytest.approx(1 + p)
    assert seconds == pytest.approx((FLAT[2] + 5) * MS)
    assert policy.expected(st, 0, 3, found=0) == pytest.approx((1.0, (FLAT[1] + 5) * MS))
    # It says nothing about plans with MTP drafts: those keep the estimated rates.
    assert policy.expected(st, 1, 3, found=0) == policy.expected(st, 1, 3)
    # Nothing offered: no n-gram-only plan beats no drafts, so MTP or nothing is chosen.
    assert policy.best(st, found=0) in {(0, 0), (1, 1), (1, 2), (1, 3)}


def test_offered_ngram_positions_have_their_own_rate():
    policy = AdaptivePolicy(K=5, mtp_steps=0, uses_ngram=True)
    st = policy.new_request()
    st.drafted(Plan(0, 5), room=10, num_drafts=2)  # 2 offered of 5 allowed
    st.observe(1)  # the first accepted, the second rejected
    lead = st.ngram_lead
    assert [(r.hits, r.trials) for r in lead.offered[:3]] == [(1, 1), (0, 1), (0, 0)]
    assert [(r.hits, r.trials) for r in lead.accepted[:3]] == [(1, 1), (0, 1), (0, 0)]
    st.drafted(Plan(0, 5), room=10, num_drafts=0)  # nothing offered
    st.observe(0)
    assert lead.accepted[0].trials == pytest.approx(adaptive.DECAY + 1)  # tried, found nothing
    assert lead.offered[0].trials == pytest.approx(adaptive.IDLE_DECAY)  # not offered


def test_ngram_drafts_after_mtp_do_not_vouch_for_the_lookup_alone():
    """MTP's draft accepted and the n-gram continuation after it too, every step, while the
    lookup's own drafts (no MTP before them) are always rejected: plans without MTP must not
    borrow the first kind's acceptance. With one set of n-gram rates, the lead's rate would be
    the after-MTP one (the second assertion fails then; checked)."""
    policy = AdaptivePolicy(5, 1, True, costs(FLAT, {1: 4.0}, 2))
    st = policy.new_request()
    chosen = []
    for _ in range(60):
        m, k = policy.best(st, found=5)
        chosen.append((m, k))
        st.drafted(Plan(m, k), room=100, num_drafts=k)
        st.observe(k if m else 0)
    print(chosen)
    assert st.ngram_after.offered[0].value > 0.9
    assert st.ngram_lead.offered[0].value < adaptive.PRIOR_MEAN
    assert all(m == 1 for m, _ in chosen[-20:])


def test_a_long_accepted_run_is_drafted_whole():
    """The lookup offers 16 and the first 14 are accepted every step, on a machine where a
    verified token costs 2/40 of a step: the cap reaches the run's length (14 or more, probing
    past it), not a short cap on the prior of positions rarely tried."""
    policy = AdaptivePolicy(16, 0, True, costs(FLAT, {}, 2))
    st = policy.new_request()
    caps = []
    for _ in range(80):
        m, k = policy.best(st, found=16)
        caps.append(k)
        st.drafted(Plan(m, k), room=100, num_drafts=k)
        st.observe(min(k, 14))
    print(caps)
    assert min(caps[-20:]) >= 14


def test_drafts_that_barely_pay_are_not_drafted():
    """One MTP draft costs 10 ms more and gains its acceptance a: (1 + a) * 90 / 100 over no
    drafts. At a = 0.12 that is 1.008 (taken without SPECULATE_GAIN), at a = 0.2 it is 1.08."""
    policy = AdaptivePolicy(
        K=1, mtp_steps=1, uses_ngram=False, costs=costs({1: 90, 2: 90}, {1: 10})
    )
    st = policy.new_request()
    for a, plan in ((0.10, (0, 0)), (0.12, (0, 0)), (0.20, (1, 1))):
        st.mtp[0].hits, st.mtp[0].trials = a * 1e6, 1e6
        assert policy.best(st) == plan, a


def test_cost_table_forgets_timings_older_than_max_age():
    t = CostTable()
    t.record(1, 0.040, step=0)
    t.record(2, 0.500, step=0)  # taken under load
    t.record(1, 0.020, step=300)
    t.expire(300 - adaptive.MAX_AGE)
    assert t.medians() == {1: 0.020}  # size 2 has no timing left: untimed, not stale


def test_costs_are_re_timed_once_per_max_age_while_the_slope_is_a_guess():
    c = Costs()
    c.record_verify(1, 0.040)
    assert c.refresh_due() and not c.refresh_due()  # one size timed: due, once
    for _ in range(adaptive.MAX_AGE - 1):
        c.record_verify(1, 0.040)
        c.record_step(0.045, typical=True)
    assert not c.refresh_due()
    c.record_step(0.045, typical=True)
    assert c.refresh_due()  # MAX_AGE steps later, still one size: due again
    c = Costs()
    c.record_verify(1, 0.040)
    c.record_verify(4, 0.050)
    assert not c.refresh_due()  # two sizes: the line is measured


def test_a_load_burst_does_not_leave_speculation_off():
    """Verify timings taken under a load burst (T = 2, 4, 6 at 13-29x their true cost) must
    not keep a request that drafts well from drafting: the sizes the policy stops planning are
    never re-timed, so only forgetting them (and re-timing) brings speculation back. The
    machine and the outcomes are synthetic: always accepted, on the FLAT machine."""
    policy = AdaptivePolicy(5, 1, True)
    costs_ = policy.costs
    # The pattern measured in-process after such a burst, scaled to FLAT's T = 1 (in ms).
    burst = {1: FLAT[1], 2: 530.0, 3: FLAT[3], 4: 610.0, 6: 1160.0}
    for t, ms in burst.items():
        for _ in range(adaptive.COST_SAMPLES):
            costs_.record_verify(t, ms * MS)
    costs_.record_mtp(1, 4 * MS, [])
    costs_.record_step(0.0, typical=False)
    st, chosen = policy.new_request(), []
    for _ in range(3 * adaptive.MAX_AGE):
        m, k = policy.best(st, found=5)
        chosen.append(k)
        st.drafted(Plan(m, k), room=100, num_drafts=k)
        costs_.record_verify(1 + k, FLAT[1 + k] * MS)
        if m:
            costs_.record_mtp(m, 4 * MS, [Plan(m, k)])
        st.observe(k)
        costs_.record_step(0.0, typical=False)
    print(chosen[:: adaptive.MAX_AGE // 8])
    assert chosen[:16] == [0] * 16  # the burst's costs say drafting loses: at first, none
    assert all(k >= 3 for k in chosen[-adaptive.MAX_AGE :])  # recovered, and stays so


def test_unmeasured_costs_run_the_configured_maximum():
    policy = AdaptivePolicy(K=5, mtp_steps=3, uses_ngram=True)
    assert policy.best(policy.new_request()) == (3, 5)
    policy.costs.verify.record(6, 0.1)  # MTP never timed yet
    assert policy.best(policy.new_request()) == (3, 5)


@pytest.mark.parametrize("machine", list(MACHINES))
def test_speculation_that_is_never_accepted_costs_at_most_a_few_percent(machine):
    verify, mtp = MACHINES[machine], {1: 4.0, 2: 8.0, 3: 12.0}
    policy = AdaptivePolicy(5, 3, True, costs(verify, mtp, 2))
    chosen = simulate(policy, policy.new_request(), 60, accept_all=False)
    print(machine, chosen)
    # Nothing is accepted, so every step emits one token, as `none` does: compare step times.
    spent = sum(verify[1 + k] + (mtp[m] if m else 0) + 2 for m, k in chosen[-40:])
    assert 40 * (verify[1] + 2) / spent >= 0.97
    if machine == "steep":
        assert chosen[-40:] == [(0, 0)] * 40


@pytest.mark.parametrize("machine", ["moderate", "flat"])
def test_speculation_that_is_always_accepted_grows_back_to_the_maximum(machine):
    policy = AdaptivePolicy(5, 3, True, costs(MACHINES[machine], {1: 4, 2: 8, 3: 12}, 2))
    st = policy.new_request()
    simulate(policy, st, 30, accept_all=False)  # first a stretch where nothing is accepted
    chosen = simulate(policy, st, 60, accept_all=True)  # then the text turns repetitive
    print(machine, chosen)
    assert all(k >= 3 for _, k in chosen[-10:])
    assert next(i for i, (_, k) in enumerate(chosen) if k >= 3) < 40
    if machine == "moderate":  # n-gram drafts alone give the same tokens without MTP's cost
        assert chosen[-10:] == [(0, 5)] * 10


@pytest.mark.parametrize("machine", ["moderate", "flat"])
def test_mtp_runs_when_only_its_drafts_are_accepted(machine):
    policy = AdaptivePolicy(5, 3, True, costs(MACHINES[machine], {1: 4, 2: 8, 3: 12}, 2))
    chosen = simulate(policy, policy.new_request(), 60, accept_all=True, ngram_finds=False)
    print(machine, chosen)
    assert all(m == 3 for m, _ in chosen[-10:])


def test_plain_mtp_never_plans_ngram_drafts():
    policy = AdaptivePolicy(3, 3, uses_ngram=False, costs=costs(FLAT, {1: 1, 2: 2, 3: 3}))
    assert policy.candidates() == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert AdaptivePolicy(2, 0, uses_ngram=True).candidates() == [(0, 0), (0, 1), (0, 2)]


def _inp(start: int, n: int, slot: int = 0) -> MTPInput:
    return MTPInput(
        slot, torch.arange(start, start + n, dtype=torch.float32)[:, None], [1] * n, start
    )


def test_skipped_mtp_steps_are_filled_when_mtp_runs_again():
    policy = AdaptivePolicy(5, 3, True, costs(STEEP, {3: 1000.0}))  # MTP far too dear
    st = policy.new_request()
    assert policy.plan(st, _inp(10, 2)) == Plan(0, 0)
    assert policy.plan(st, _inp(12, 3)).mtp_input is None
    policy.costs = costs(FLAT, {3: 0.1})  # now it is cheap, and its drafts are accepted
    for r in st.mtp:
        r.hits = r.trials = 20.0
    plan = policy.plan(st, _inp(15, 1))
    assert plan.mtp_steps == 3 and not st.pending and not plan.catch_up
    assert plan.mtp_input.start == 10 and plan.mtp_input.hidden[:, 0].tolist() == list(
        range(10, 16)
    )
    with pytest.raises(ValueError, match="not consecutive"):
        join_mtp_inputs([_inp(0, 2), _inp(3, 1)])


def test_the_adaptive_key_is_validated():
    assert SpeculativeConfig.from_json(HYBRID_ADAPTIVE).adaptive is True
    assert SpeculativeConfig.from_json(HYBRID_ADAPTIVE).label == "mtp+ngram K=5 s=3 adaptive"
    with pytest.raises(ValueError, match="adaptive='yes'"):
        SpeculativeConfig.from_json(HYBRID[:-1] + ',"adaptive":"yes"}')
    with pytest.raises(ValueError, match="needs method"):
        SpeculativeConfig.from_json('{"method":"none","adaptive":true}')


# ---------------------------------------------------------------- the engine, real model

chat_prompts, greedy_none = test_engine.chat_prompts, test_engine.greedy_none  # the fixtures


def test_adaptive_hybrid_greedy_equals_none(model_and_tokenizer, chat_prompts, greedy_none):
    """The real policy on this machine's real costs, three requests batched."""
    engine = make_engine(model_and_tokenizer, HYBRID_ADAPTIVE)
    results = run(engine, chat_prompts, SamplingParams(max_tokens=24, temperature=0.0))
    for r, ref in zip(results, greedy_none, strict=True):
        assert r.token_ids == ref.token_ids
        assert r.text == ref.text
        check_invariants(r, engine.K)  # K stays the configured maximum in speculate_metrics
    assert engine.adaptive.costs.verify.samples and engine.adaptive.costs.mtp.samples


class _ScriptedPolicy(AdaptivePolicy):
    """Any decision sequence must stay lossless: this one draws (MTP steps, cap) from a seeded
    generator instead of the costs, so every path (MTP skipped, caught up, caps 0..K, rows with
    different plans in one batch) runs on the real model whatever this machine's timings."""

    def __init__(self, *args, seed: int) -> None:
        super().__init__(*args)
        self.rng = random.Random(seed)
        self.seen: set[tuple[int, int]] = set()
        self.found: list[int | None] = []

    def best(self, state, found=None):
        choice = self.rng.choice(self.candidates())
        self.seen.add(choice)
        self.found.append(found)
        return choice


@pytest.mark.parametrize("seed", [0, 1])
def test_any_adaptive_decisions_keep_greedy_output_and_metrics_exact(
    model_and_tokenizer, chat_prompts, greedy_none, seed
):
    print(f"seed {seed}")
    engine = make_engine(model_and_tokenizer, HYBRID_ADAPTIVE)
    engine.adaptive = _ScriptedPolicy(5, 3, True, seed=seed)
    results = run(engine, chat_prompts, SamplingParams(max_tokens=24, temperature=0.0))
    for r, ref in zip(results, greedy_none, strict=True):
        assert r.token_ids == ref.token_ids
        check_invariants(r, engine.K)
        steps = r.metrics["accepted_tokens_per_head"][0]
        assert sum(len(o.token_ids) for o in r.outputs) == r.outputs[-1].completion_tokens
        assert r.metrics["rejected_tokens"] == steps * 6 - r.outputs[-1].completion_tokens
    assert {(0, 0), (3, 5)} <= engine.adaptive.seen and any(
        0 < m < 3 for m, _ in engine.adaptive.seen
    )
    # The n-gram lookup ran before every plan and offered drafts (which n-gram-only plans took).
    assert None not in engine.adaptive.found and max(engine.adaptive.found) > 0
