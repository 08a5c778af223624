"""The serving benchmark's harness: its statistics (CI, fast), a complete --quick run (benchmark).

The statistics tests build rounds by hand: the point is the pairing (a speedup is taken against
`none` of the same round), which a drifting machine cannot show on demand.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.bench_serving import (
    PEERS,
    RoundResult,
    Sample,
    Settings,
    Stat,
    acceptance_cell,
    paired_ratio,
    parse_args,
    render,
    run,
    verdict,
)


def settings(**kw) -> Settings:
    base = dict(
        configs=("none", "ngram K=5"),
        peers=(),
        concurrency=(1,),
        threads=(1,),
        dtype="bfloat16",
        rounds=3,
        max_tokens=8,
        prompts_per_kind=1,
        seed=0,
    )
    return Settings(**(base | kw))


def round_with(index: int, rates: dict[str, float], steps: int = 100) -> RoundResult:
    """A round where each label produced 100 tokens at the given tok/s (steps per request)."""
    r = RoundResult(index)
    for label, rate in rates.items():
        r.add((label, 1, 1, "all"), Sample(100, 100 / rate, steps, 100))
    return r


def test_stat_median_and_spread():
    assert Stat.of([3.0, 1.0, 2.0]) == Stat(2.0, 1.0, 3.0, 3)  # min-max below 5 values
    s = Stat.of([1.0, 2.0, 3.0, 4.0, 100.0])  # interquartile range from 5 values on
    assert (s.median, s.lo, s.hi) == (3.0, 2.0, 4.0)
    assert Stat.of([float("nan")]).n == 0
    assert Stat.of([1.5, 2.5]).fmt(suffix="x") == "2.00x (1.50–2.50)"


def test_speedup_is_paired_within_a_round():
    # The machine slows down 3x between rounds; ngram is 1.5x none in every round. A speedup
    # taken across rounds (ngram of round 1 / none of round 2) would read 4.5x or 0.5x.
    rounds = [
        round_with(1, {"none": 10.0, "ngram K=5": 15.0}),
        round_with(2, {"none": 30.0, "ngram K=5": 45.0}),
        round_with(3, {"none": 20.0, "ngram K=5": 30.0}),
    ]
    s = paired_ratio(rounds, ("ngram K=5", 1, 1, "all"), ("none", 1, 1, "all"))
    assert (s.median, s.lo, s.hi, s.n) == pytest.approx((1.5, 1.5, 1.5, 3))


def test_acceptance_reported_once_and_flagged_when_rounds_differ():
    same = [round_with(i, {"ngram K=5": 10.0}, steps=50) for i in (1, 2)]
    assert acceptance_cell(same, ("ngram K=5", 1, 1, "all")) == ("2.00", "0.500", None)
    differ = same + [round_with(3, {"ngram K=5": 10.0}, steps=40)]
    length, ratio, flag = acceptance_cell(differ, ("ngram K=5", 1, 1, "all"))
    assert "⚠" in length and "⚠" in ratio and "round 3: 2.500" in flag


def test_render_has_a_row_per_cell_and_a_round_table():
    s = settings()
    rounds = [round_with(i, {"none": 10.0 * i, "ngram K=5": 14.0 * i}) for i in (1, 2, 3)]
    md = render(s, rounds, {"machine": "test"})
    assert "| none | 1 | all | 20.00 (10.00–30.00) | 1.00x (1.00–1.00) | 1.00 | 0.000 |" in md
    assert "| ngram K=5 | 1 | all | 28.00 (14.00–42.00) | 1.40x (1.40–1.40) |" in md
    assert "| 3 |" in md.split("Rounds (")[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "--rounds=0"),
        (["--threads", "0"], "--threads=0"),
        (["--concurrency", "9"], "--concurrency=9"),
        (["--configs", "bogus"], "bogus"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_none_is_always_measured():
    s, _ = parse_args(["--configs", "ngram K=5", "--concurrency", "8"])
    assert s.configs == ("none", "ngram K=5") and s.peers == ()  # peers run at concurrency 1


def table_rows(md: str) -> list[list[str]]:
    lines = md.split("| config |")[1].split("\n\n")[0].splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


@pytest.mark.benchmark
def test_quick_run_produces_a_complete_table():
    pytest.importorskip("transformers")
    s, _ = parse_args(["--quick"])
    md = run(s)
    rows = table_rows(md)
    expected = {(c, 1, "repetitive") for c in [*s.configs, *s.peers]}
    expected |= {(c, 8, "all") for c in s.configs}
    got = {(r[0].removesuffix(" (peer)"), int(r[1]), r[2]) for r in rows}
    assert expected <= got, expected - got
    for r in rows:
        tok_s, speedup = float(r[3].split()[0]), float(r[4].split()[0].rstrip("x"))
        assert math.isfinite(tok_s) and tok_s > 0 and math.isfinite(speedup), r
        if r[0].removesuffix(" (peer)") not in PEERS:
            assert math.isfinite(float(r[6].split()[0])), r  # mean accept length


def test_goal_verdict_uses_the_whole_spread():
    assert verdict(Stat(1.7, 1.55, 1.9, 3), 1.5) == "met"
    assert verdict(Stat(1.6, 1.4, 1.9, 3), 1.5) == "unclear"
    assert verdict(Stat(1.2, 1.1, 1.4, 3), 1.5) == "not met"
    assert verdict(Stat(1.0, 1.0, 1.0, 3), 1.0, strict=True) == "not met"


def test_explicit_flags_win_over_quick_and_defaults():
    quick, _ = parse_args(["--quick", "--rounds", "3"])
    assert (quick.rounds, quick.threads, quick.max_tokens) == (3, (1,), 24)
    full, out = parse_args(["--out", "x.md"])
    assert (full.rounds, full.threads, full.prompts_per_kind, out) == (5, (2,), 4, "x.md")
