"""Adaptive drafting (opt-in, `"adaptive": true` in `--speculative-config`): per request and per
step, the draft length k <= K and the number of MTP steps that maximise expected tokens per
second, from what speculation measurably costs and saves on the machine it runs on.

Speculation pays only when the tokens a step gains outweigh what the draft and its verification
cost. Both sides are measured, never assumed:

- per request, the acceptance of each draft position, separately for the MTP drafts (position j
  of the MTP part) and the n-gram drafts (position i of the n-gram part, counted apart for parts
  that lead the row and parts after MTP drafts; a position the n-gram lookup found nothing for
  counts as not accepted, so its rate is "a useful token came"; and, apart, the rate of an
  n-gram position that was offered), as decayed counts (`DECAY` per trial, `IDLE_DECAY` per step
  without one) over a Beta prior;
- per step, how many drafts the n-gram lookup offers on the verified text alone: the engine
  runs the lookup before it plans (one op call, `found`), so a plan without MTP knows exactly
  what it would verify. Where the text repeats, the lookup's own drafts then replace the MTP
  step and its cost; where it finds nothing, no n-gram-only plan is scored on hope;
- engine-wide, the verify forward's time by tokens per row and the MTP draft call's time by its
  steps (`CostTable`: recent medians and a line through them; a timing is forgotten after
  MAX_AGE steps, and while fewer than two sizes have a recent one the configured maximum runs
  once to re-time them, so a load burst cannot leave stale costs behind), and an EMA of the
  rest of a step (acceptance, emission, the n-gram op).

`AdaptivePolicy.plan` then scores every (MTP steps m, cap k) with
    tokens/s = (1 + E[accepted drafts]) / (verify(E[T]) + mtp(m) + rest)
and picks the best. Positions beyond the plan are re-probed two ways: a position not tried
drifts back to the prior, and every PROBE_EVERY steps the plan takes one position more when that
position could pay (PROBE_GAIN). So a request whose text turns repetitive again grows its drafts
back, and where a verified token costs about a whole step nothing is spent on probes.

Skipping MTP leaves the head's KV cache behind: the verified pairs of skipped steps are kept
(`RequestState.pending`) and filled in one block when MTP runs again, so its drafts stay right.

Greedy output does not depend on any of this (verification is lossless for any draft) and
per-request speculate_metrics keep K as the configured maximum. Only the drafts change.

The unit tests drive this module with synthetic costs and acceptance outcomes: a machine whose
verify cost grows with T, another where it is flat. That stand-in has no real counterpart (the
real costs come from the engine on whatever CPU it runs on); the engine tests use the real one.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from refserver.mtp import MTPInput, join_mtp_inputs

# A position's statistics weigh its last ~20 trials; a position not tried drifts back to the
# prior (its weight halves in ~35 steps), so it is tried again while the prior says it may pay.
DECAY, IDLE_DECAY = 0.95, 0.98
PRIOR_MEAN, PRIOR_WEIGHT = 0.5, 1.0  # Beta prior of every position's acceptance
COST_EMA = 0.2  # weight of a new timing in the rest of a step's cost
COST_SAMPLES = 9  # timings per size that CostTable takes the median of
# Every PROBE_EVERY steps a request drafts one position more than its best plan, if that position
# would gain more than PROBE_GAIN were it always accepted (where a verified token costs about a
# whole step it cannot, and nothing is spent on probes).
PROBE_EVERY, PROBE_GAIN = 16, 1.1
# A plan with drafts is chosen only if it beats drafting nothing by this factor: near break-even
# the estimates' noise and the MTP catch-up fill after skipped steps (not in the estimate) make
# speculation lose on average (measured: 0.93-0.97x `none` on open prompts on AVX2 without it).
SPECULATE_GAIN = 1.03
# A timing is forgotten after MAX_AGE engine steps (~1-3 s of decoding on a CPU), and while
# fewer than two verify sizes have a timing that recent, once per MAX_AGE steps a plan runs the
# configured maximum to re-time them. Without this, timings taken while steps were slow for a
# passing reason (a load burst; in a serving benchmark, slow first steps of unknown cause) were
# never replaced for the sizes the policy then stopped drafting: measured, a burst during the
# first two requests left verify at T = 2..6 at 210-460 ms (true: ~20 ms), and speculation
# nearly off, for good. With 256 steps the serving benchmark still lost its first round (6
# requests of 64 tokens); with 64, at most one request.
MAX_AGE = 64


@dataclass(frozen=True)
class Plan:
    """What to draft for one row this step: `mtp_steps` MTP drafts (0: skip MTP), at most
    `max_drafts` drafts in all; `mtp_input` is what the MTP drafter gets (None without MTP)."""

    mtp_steps: int
    max_drafts: int
    mtp_input: MTPInput | None = None
    catch_up: bool = False  # mtp_input has more pairs than one step verifies


class CostTable:
    """A duration by size (tokens per row of a verify forward; steps of an MTP call): the median
    of each size's last COST_SAMPLES timings, and a straight line through those medians (least
    squares weighted by their counts, never falling with size) that every estimate reads.

    Why not one EMA per size, as before: on a busy host a one-token forward took 27-44 ms from
    one minute to the next (session 6), so each size's EMA carried the noise of the moment it
    was last timed and the table came out of order (T = 6 dearer than T = 9), and the policy
    capped drafts on that. A median drops the spikes; one line shared by all sizes keeps them in
    order and lets a rarely timed size borrow from the others."""

    def __init__(self) -> None:
        self.samples: dict[int, deque[tuple[int, float]]] = {}  # size -> (step, seconds)
        self._line: tuple[float, float, float] | None = None  # (intercept, slope, floor)

    def record(self, size: int, seconds: float, step: int = 0) -> None:
        """A timing of `size`, taken at engine step `step`."""
        self.samples.setdefault(size, deque(maxlen=COST_SAMPLES)).append((step, seconds))
        self._line = None

    def expire(self, before: int) -> None:
        """Forget the timings taken before step `before` (a size left without any is untimed)."""
        for size in list(self.samples):
            timings = self.samples[size]
            while timings and timings[0][0] < before:
                timings.popleft()
                self._line = None
            if not timings:
                del self.samples[size]

    def medians(self) -> dict[int, float]:
        return {k: statistics.median(t for _, t in v) for k, v in sorted(self.samples.items())}

    def fit(self) -> tuple[float, float]:
        """(intercept, slope) through the medians; through the origin while one size is
        timed (a cost proportional to size, the cautious guess)."""
        med = self.medians()
        if len(med) == 1:
            ((k, v),) = med.items()
            return 0.0, v / k
        w = {k: len(self.samples[k]) for k in med}
        n = sum(w.values())
        mx = sum(w[k] * k for k in med) / n
        my = sum(w[k] * v for k, v in med.items()) / n
        sxx = sum(w[k] * (k - mx) ** 2 for k in med)
        slope = max(sum(w[k] * (k - mx) * (v - my) for k, v in med.items()) / sxx, 0.0)
        return my - slope * mx, slope

    def estimate(self, size: float) -> float | None:
        """The line at `size`, never below half the cheapest median; None before any timing."""
        if not self.samples:
            return None
        if self._line is None:  # refit after a new timing only: the policy asks ~2K times a row
            self._line = (*self.fit(), 0.5 * min(self.medians().values()))
        a, b, floor = self._line
        return max(a + b * size, floor)


@dataclass
class Costs:
    """Engine-wide measured costs (seconds)."""

    verify: CostTable = field(default_factory=CostTable)  # by tokens per row, T = 1 + drafts
    mtp: CostTable = field(default_factory=CostTable)  # by MTP steps
    rest: float = 0.0  # a step's time outside the verify forward and the MTP call
    steps: int = 0  # engine steps so far: the clock of MAX_AGE
    refreshed_at: int = -MAX_AGE  # the step of the last `refresh_due`
    _in_step: float = 0.0

    def record_verify(self, tokens_per_row: int, seconds: float) -> None:
        self.verify.record(tokens_per_row, seconds, self.steps)
        self._in_step += seconds

    def record_mtp(self, steps: int, seconds: float, plans: Sequence[Plan]) -> None:
        self._in_step += seconds
        if not any(p.catch_up for p in plans):  # a catch-up fill is not what a step costs
            self.mtp.record(steps, seconds, self.steps)

    def record_step(self, seconds: float, *, typical: bool) -> None:
        """A whole engine step; `typical`: no prefill in it (a prefill is not per-step cost)."""
        if typical:
            rest = max(seconds - self._in_step, 0.0)
            self.rest = rest if not self.rest else self.rest + COST_EMA * (rest - self.rest)
        self._in_step = 0.0
        self.steps += 1
        self.verify.expire(self.steps - MAX_AGE)
        self.mtp.expire(self.steps - MAX_AGE)

    def refresh_due(self) -> bool:
        """Whether this plan should run the configured maximum to re-time the verify forward:
        fewer than two sizes have a recent timing (so the slope is a guess), and no refresh ran
        in the last MAX_AGE steps. True once per such stretch."""
        if len(self.verify.samples) >= 2 or self.steps - self.refreshed_at < MAX_AGE:
            return False
        self.refreshed_at = self.steps
        return True


class _Rate:
    """A decayed success count over a decayed trial count, read with the Beta prior."""

    __slots__ = ("hits", "trials")

    def __init__(self) -> None:
        self.hits = self.trials = 0.0

    def add(self, hit: bool) -> None:
        self.hits = self.hits * DECAY + hit
        self.trials = self.trials * DECAY + 1.0

    def idle(self) -> None:
        self.hits *= IDLE_DECAY
        self.trials *= IDLE_DECAY

    @property
    def value(self) -> float:
        return (self.hits + PRIOR_MEAN * PRIOR_WEIGHT) / (self.trials + PRIOR_WEIGHT)


class NgramRates:
    """The n-gram part of a draft, by its position i (0: the part's first draft)."""

    def __init__(self, K: int) -> None:
        self.accepted = [_Rate() for _ in range(K)]  # accepted | reached, allowed
        self.found = [_Rate() for _ in range(K)]  # offered | allowed
        self.offered = [_Rate() for _ in range(K)]  # accepted | reached, offered

    def all(self) -> tuple[_Rate, ...]:
        return (*self.accepted, *self.found, *self.offered)


@dataclass
class RequestState:
    """One request's acceptance statistics, what its last draft was made of, and the MTP pairs
    of steps that skipped MTP.

    The n-gram part is counted apart by where it starts: leading the row (no MTP drafts: the
    lookup on the verified text) or after MTP drafts (the lookup keyed with them). Pooled, the
    n-gram drafts that follow an accepted MTP draft (a text on track) vouched for plans without
    MTP: a selection bias (`test_ngram_drafts_after_mtp_do_not_vouch_for_the_lookup_alone`)."""

    K: int
    mtp_steps: int
    mtp: list[_Rate] = field(init=False)  # [j]: accepted | MTP position j+1 reached
    ngram_lead: NgramRates = field(init=False)  # plans without MTP drafts
    ngram_after: NgramRates = field(init=False)  # plans with MTP drafts
    pending: list[MTPInput] = field(default_factory=list)
    last: tuple[int, int, int] | None = None  # (MTP drafts, n-gram allowed, n-gram offered)
    steps: int = 0

    def __post_init__(self) -> None:
        self.mtp = [_Rate() for _ in range(self.mtp_steps)]
        self.ngram_lead, self.ngram_after = NgramRates(self.K), NgramRates(self.K)

    def ngram(self, mtp_drafts: int) -> NgramRates:
        """The n-gram statistics of a draft that starts with `mtp_drafts` MTP tokens."""
        return self.ngram_after if mtp_drafts else self.ngram_lead

    def drafted(self, plan: Plan, room: int, num_drafts: int) -> None:
        """The row's draft after its cap: `num_drafts` tokens, the first min(m, num_drafts)
        from MTP; `room`: drafts that max_tokens still lets count."""
        m = min(plan.mtp_steps, num_drafts)
        allowed = max(min(plan.max_drafts, room) - m, 0)
        self.last = (m, allowed, num_drafts - m)

    def observe(self, accepted: int) -> None:
        """Acceptance of the last draft: `accepted` leading drafts were accepted."""
        m, allowed, offered = self.last or (0, 0, 0)
        self.last, self.steps = None, self.steps + 1
        tried = set()
        for j in range(m):
            if accepted >= j:  # position j+1 was reached: every earlier draft was accepted
                self.mtp[j].add(accepted > j)
                tried.add(id(self.mtp[j]))
        ngram = self.ngram(m)
        for i in range(allowed):
            ngram.found[i].add(i < offered)
            tried.add(id(ngram.found[i]))
            if accepted >= m + i:
                ngram.accepted[i].add(accepted > m + i)
                tried.add(id(ngram.accepted[i]))
                if i < offered:
                    ngram.offered[i].add(accepted > m + i)
                    tried.add(id(ngram.offered[i]))
        for r in (*self.mtp, *self.ngram_lead.all(), *self.ngram_after.all()):
            if id(r) not in tried:
                r.idle()


class AdaptivePolicy:
    def __init__(
        self, K: int, mtp_steps: int, uses_ngram: bool, costs: Costs | None = None
    ) -> None:
        self.K, self.mtp_steps, self.uses_ngram = K, mtp_steps, uses_ngram
        self.costs = costs or Costs()

    def new_request(self) -> RequestState:
        return RequestState(self.K, self.mtp_steps)

    def expected(
        self,
        state: RequestState,
        m: int,
        k: int,
        sure_from: int | None = None,
        found: int | None = None,
    ) -> tuple[float, float] | None:
        """(tokens per step, seconds per step) of drafting m MTP tokens, then n-gram tokens up
        to k in all; None while the costs it needs were never measured. Drafts from position
        `sure_from` on count as always found and accepted (a probe's best case). `found`: how
        many drafts the n-gram lookup offers this step without MTP drafts (known for m = 0,
        where the lookup's input is the verified text alone); None: estimated from the rates."""
        reach, accepted, tokens_per_row = 1.0, 0.0, 1.0
        for j in range(m):
            reach *= 1.0 if sure_from is not None and j >= sure_from else state.mtp[j].value
            accepted += reach
            tokens_per_row += 1
        known = found if m == 0 else None
        ngram = state.ngram(m)
        for i in range(k - m):
            sure = sure_from is not None and m + i >= sure_from
            if sure:
                tokens_per_row += 1.0
            elif known is None:
                tokens_per_row += ngram.found[i].value
                reach *= ngram.accepted[i].value
            elif i < known:
                tokens_per_row += 1.0
                reach *= ngram.offered[i].value
            else:
                break  # the lookup offers no more drafts
            accepted += reach
        verify = self.costs.verify.estimate(tokens_per_row)
        mtp = self.costs.mtp.estimate(m) if m else 0.0
        if verify is None or mtp is None:
            return None
        return 1.0 + accepted, verify + mtp + self.costs.rest

    def candidates(self) -> list[tuple[int, int]]:
        """(MTP steps, cap) pairs: no drafts; n-gram drafts only; MTP first (all s steps once
        the cap reaches s), then n-gram drafts up to the cap."""
        s = self.mtp_steps
        out = [(0, 0)]
        if self.uses_ngram:
            out += [(0, k) for k in range(1, self.K + 1)]
        out += [(min(s, k), k) for k in range(1, self.K + 1) if s and (self.uses_ngram or k <= s)]
        return out

    def best(self, state: RequestState, found: int | None = None) -> tuple[int, int]:
        """(MTP steps, cap) with the most expected tokens per second (every PROBE_EVERY steps
        one position more, see PROBE_GAIN); the configured maximum while the costs are not
        measured yet, or to re-time them (`Costs.refresh_due`). `found`: see `expected`."""
        if self.costs.refresh_due():
            return self.mtp_steps, self.K
        best, best_rate = (self.mtp_steps, self.K), -1.0
        for m, k in self.candidates():  # (0, 0) first
            score = self.expected(state, m, k, found=found)
            if score is None:
                return self.mtp_steps, self.K
            rate = score[0] / score[1]
            if (m, k) == (0, 0):
                rate *= SPECULATE_GAIN  # what a plan with drafts must beat
            if rate > best_rate:
                best, best_rate = (m, k), rate
        if state.steps % PROBE_EVERY == PROBE_EVERY - 1:
            cap = best[1]
            for m, k in self.candidates():
                if k != cap + 1 or (m == 0 and found is not None and k > found):
                    continue  # (a position the lookup does not offer cannot be probed)
                score = self.expected(state, m, k, sure_from=cap, found=found)
                if score and score[0] / score[1] > PROBE_GAIN * best_rate:
                    return m, k
        return best

    def plan(
        self, state: RequestState, mtp_input: MTPInput | None, found: int | None = None
    ) -> Plan:
        """This step's plan for one row (`found`: see `expected`). Without MTP steps its MTP
        input is kept for later."""
        m, k = self.best(state, found)
        if m == 0 or mtp_input is None:
            if mtp_input is not None:  # a copy: a view would keep the batch's hidden alive
                state.pending.append(replace(mtp_input, hidden=mtp_input.hidden.clone()))
            return Plan(0, k)
        if state.pending:
            mtp_input = join_mtp_inputs([*state.pending, mtp_input])
            state.pending = []
        # More pairs than one step verifies (a prompt, or steps that skipped MTP): that fill is
        # not what an MTP step costs.
        return Plan(m, k, mtp_input, catch_up=len(mtp_input.next_tokens) > self.K + 1)
