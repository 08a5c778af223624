"""Baseline files: round trip, malformed files, staleness, atomic writes, readable diffs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.baseline import (
    Baseline,
    BaselineError,
    BaselineFormatError,
    check_dtype,
    check_fresh,
    diff_baselines,
    load_baseline,
    write_baseline_atomic,
)

PROV = {
    "date": "2026-01-01T00:00:00+00:00",
    "git_commit": "abc",
    "host": "h",
    "device": "cpu",
    "torch": "2.13.0",
    "python": "3.11",
    "server_command": "x --port {port}",
    "scenario_hash": "sha256:1",
}


def make(fields: dict, text: str = "t", h: str = "sha256:1") -> Baseline:
    return Baseline("demo", h, dict(PROV), {"r1": {"fields": fields, "text": text}})


def test_round_trip_keeps_values_exactly(tmp_path: Path) -> None:
    fields = {"accept_ratio": 0.6470588235294118, "accepted_tokens_per_head": [51, 33, 13, 2, 1, 0]}
    path = tmp_path / "b" / "demo.yaml"
    write_baseline_atomic(path, make(fields))
    loaded = load_baseline(path)
    assert loaded.requests["r1"]["fields"] == fields
    assert loaded.provenance == PROV
    assert "accepted_tokens_per_head: [51, 33, 13, 2, 1, 0]" in path.read_text()  # one line


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "demo.yaml"
    write_baseline_atomic(path, make({"a": 1}))
    before = path.read_bytes()

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_baseline_atomic(path, make({"a": 2}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo.yaml"]


GOOD_HEAD = "specgate_baseline: 1\nscenario: x\nscenario_hash: h\nprovenance: {}\n"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("scenario: x\n", "key 'specgate_baseline': expected 1"),
        (GOOD_HEAD + "requests: []\n", "key 'requests': expected a mapping"),
        (GOOD_HEAD + "requests: {r1: {text: a}}\n", "key 'requests.r1.fields'"),
        (
            GOOD_HEAD + "requests: {r1: {fields: {accepted_tokens: '48'}}}\n",
            "key 'requests.r1.fields.accepted_tokens': expected a number or a list of numbers, "
            "got '48'",
        ),
        (
            GOOD_HEAD + "requests: {r1: {fields: {accept_ratio: abc}}}\n",
            "key 'requests.r1.fields.accept_ratio': expected a number or a list of numbers, "
            "got 'abc'",
        ),
        (
            GOOD_HEAD + "requests: {r1: {fields: {per_head: [1, x]}}}\n",
            "key 'requests.r1.fields.per_head': expected a number or a list of numbers",
        ),
        (
            GOOD_HEAD + "requests: {r1: {fields: {ok: true}}}\n",
            "key 'requests.r1.fields.ok': expected a number or a list of numbers, got True",
        ),
        (
            GOOD_HEAD + "requests: {r1: {fields: {}, text: [1]}}\n",
            "key 'requests.r1.text': expected a string",
        ),
        (
            GOOD_HEAD + "scenario: y\nrequests: {}\n",
            "line 5, column 1: key 'scenario' appears twice",
        ),
        (
            GOOD_HEAD + "requests: {r1: {fields: &f {a: 1}}, r2: {fields: *f}}\n",
            "anchor (&f) is not allowed",
        ),
        ("a: [", "not valid YAML"),
    ],
)
def test_malformed_baselines_name_the_file_and_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(BaselineFormatError) as info:
        load_baseline(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_binary_baseline_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(GOOD_HEAD.encode() + b"requests: {}\n\xff\xfe\x00")
    with pytest.raises(BaselineFormatError, match=r"bad\.yaml: not UTF-8 text \(byte 0xff at"):
        load_baseline(path)


def test_values_that_are_the_same_object_are_written_without_aliases(tmp_path: Path) -> None:
    shared = [51, 33, 13]
    baseline = make({"a": shared, "b": shared})
    baseline.requests["r2"] = baseline.requests["r1"]
    path = tmp_path / "demo.yaml"
    write_baseline_atomic(path, baseline)
    assert "&" not in path.read_text() and "*" not in path.read_text()
    assert load_baseline(path).requests["r2"]["fields"]["b"] == shared


def test_missing_and_stale_baselines_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="specgate baseline update"):
        load_baseline(tmp_path / "none.yaml")
    with pytest.raises(BaselineError) as info:
        check_fresh(make({}), "sha256:2", tmp_path / "b.yaml", tmp_path / "s.yaml")
    assert "stale baseline" in str(info.value)
    assert f"specgate baseline update {tmp_path / 's.yaml'}" in str(info.value)
    check_fresh(make({}), "sha256:1", tmp_path / "b.yaml", tmp_path / "s.yaml")  # fresh: no error


REFSERVER = ("{python}", "-m", "refserver", "--port", "{port}")


def test_a_baseline_holds_one_dtype_and_the_scenario_must_pin_it(tmp_path: Path) -> None:
    recorded = make({})
    recorded.provenance["server_command"] = "'{python}' -m refserver --dtype float32 --seed 0"
    scenario = tmp_path / "s.yaml"
    check_dtype(recorded, (*REFSERVER, "--dtype", "float32"), scenario)  # same dtype: fine
    check_dtype(None, (*REFSERVER, "--dtype=bfloat16"), scenario)  # nothing recorded yet
    check_dtype(recorded, None, scenario)  # a running server: not ours to check
    with pytest.raises(
        BaselineError,
        match=r"recorded with the server in --dtype float32, but "
        r"the scenario runs it in --dtype bfloat16",
    ):
        check_dtype(recorded, (*REFSERVER, "--dtype", "bfloat16"), scenario)
    for command, why in (
        ((*REFSERVER, "--dtype", "auto"), "passes --dtype auto"),
        (REFSERVER, "has no --dtype"),  # refserver's default is auto
        (("vllm", "serve", "m", "--dtype", "auto"), "passes --dtype auto"),
    ):
        with pytest.raises(BaselineError, match=why) as info:
            check_dtype(recorded, command, scenario)
        assert "pin --dtype float32 or --dtype bfloat16" in str(info.value)
    check_dtype(recorded, ("vllm", "serve", "m"), scenario)  # not refserver: its default is its own


def test_committed_scenarios_pin_the_dtype_their_baseline_was_recorded_in() -> None:
    from e2e.scenario import load_scenario, resolve_scenarios

    root = Path(__file__).resolve().parents[2]
    checked = 0
    for path in resolve_scenarios([], root / "scenarios"):
        scenario = load_scenario(path)
        if scenario.kind != "metrics" or not scenario.baseline.exists():
            continue
        check_dtype(load_baseline(scenario.baseline), scenario.server.command, path)
        checked += 1
    assert checked >= 5


def test_diff_lists_moved_fields_text_and_provenance() -> None:
    old = make({"accepted_tokens": 100, "accept_ratio": 0.49, "accepted_tokens_per_head": [51, 33]})
    new = make(
        {"accepted_tokens": 98, "accept_ratio": 0.5, "accepted_tokens_per_head": [51, 31]},
        text="other",
    )
    new.provenance["git_commit"] = "def"
    diff = diff_baselines(old, new)
    assert "provenance.git_commit: 'abc' -> 'def'" in diff
    assert "accepted_tokens: 100 -> 98 (-2)" in diff
    assert "accept_ratio: 0.49 -> 0.5 (+0.01)" in diff
    assert "accepted_tokens_per_head: [51, 33] -> [51, 31]" in diff
    assert "text changed" in diff
    assert "0 of 1 requests unchanged" in diff
    assert diff_baselines(old, old).endswith("1 of 1 requests unchanged")
