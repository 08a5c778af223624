"""Lossless scenarios: identical greedy texts pass; a divergence passes only at a near-tie that the
reference server's top-2 logprobs show to be within the allowance."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import fake_server, write_scenario

from e2e.client import Completion, TokenLogprob
from e2e.lossless import greedy_with_logprobs, judge
from e2e.runner import run_scenario
from e2e.scenario import RequestSpec, load_scenario
from e2e.server import ServerPool

REQUEST = RequestSpec("r", "chat", {"messages": [{"role": "user", "content": "x"}]})


def completion(tokens: list[str], gaps: dict[int, tuple[str, float]] | None = None) -> Completion:
    """Tokens with top-2 logprobs; gaps[i] = (runner-up token, gap) at position i."""
    items = []
    for i, tok in enumerate(tokens):
        other, gap = (gaps or {}).get(i, (f"<{i}>", 3.0))
        items.append(TokenLogprob(tok, -0.5, [(tok, -0.5), (other, -0.5 - gap)]))
    return Completion(REQUEST, "".join(tokens), "length", None, {}, [], items, 0.1)


def test_identical_texts_pass() -> None:
    assert judge(completion(["a", "b"]), completion(["a", "b"]), 1e-3).ok


def test_divergence_at_a_near_tie_is_allowed_and_explained() -> None:
    reference = completion(["a", "b", "c"], {1: ("B", 4e-4)})
    candidate = completion(["a", "B", "x"])
    verdict = judge(reference, candidate, 1e-3)
    assert verdict.ok
    assert "token 1" in verdict.detail and "4.00e-04 <= 0.001" in verdict.detail


def test_divergence_without_a_near_tie_fails() -> None:
    reference = completion(["a", "b", "c"], {1: ("B", 2e-3)})
    verdict = judge(reference, completion(["a", "B", "x"]), 1e-3)
    assert not verdict.ok and "2.00e-03 > 0.001" in verdict.detail


def test_divergence_to_a_token_outside_the_top_2_fails() -> None:
    reference = completion(["a", "b", "c"], {1: ("Z", 1e-5)})
    verdict = judge(reference, completion(["a", "B", "x"]), 1e-3)
    assert not verdict.ok and "not a near-tie" in verdict.detail


def test_without_logprobs_a_difference_cannot_be_excused() -> None:
    reference = Completion(REQUEST, "ab", "length", None, {}, [], [], 0.1)
    candidate = Completion(REQUEST, "aB", "length", None, {}, [], [], 0.1)
    assert not judge(reference, candidate, 1e-3).ok


def test_early_stop_is_a_failure() -> None:
    verdict = judge(completion(["a", "b", "c"]), completion(["a", "b"]), 1e-3)
    assert not verdict.ok and "candidate stops after 2 tokens" in verdict.detail


def test_requests_are_forced_greedy_with_top2_logprobs() -> None:
    body = greedy_with_logprobs(
        RequestSpec("r", "chat", {"temperature": 0.7, "top_logprobs": 5})
    ).body
    assert body == {"temperature": 0, "logprobs": True, "top_logprobs": 5}
    assert greedy_with_logprobs(RequestSpec("r", "completion", {})).body["logprobs"] == 2


@pytest.mark.parametrize(("gap", "passes"), [(5e-4, True), (5e-2, False)])
def test_lossless_scenario_against_two_servers(tmp_path: Path, gap: float, passes: bool) -> None:
    same = {"accept_nums": [1, 2, 3]}
    path = write_scenario(
        tmp_path,
        "lossless",
        {
            "kind": "lossless",
            "servers": {
                "reference": fake_server(tmp_path, {**same, "tie_at": 2, "gap": gap}, "ref"),
                "candidate": fake_server(tmp_path, {**same, "diverge_at": 2, "gap": gap}, "cand"),
            },
            "requests": [
                {"id": "p", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            ],
        },
    )
    pool = ServerPool(tmp_path / "logs")
    try:
        result = run_scenario(load_scenario(path), pool)
    finally:
        pool.close()
    assert result.passed is passes, result
    assert result.rows[0].field == "text"
    assert ("near-tie at token 2" if passes else "diverged at token 2") in result.rows[0].detail
