"""The runner over real HTTP against the fake engine: every adapter, concurrency, request errors."""

from __future__ import annotations

from pathlib import Path

import requests
from e2e_helpers import fake_scenario

from e2e.runner import measure
from e2e.scenario import load_scenario
from e2e.server import ServerPool


def _measure(path: Path, stats: dict | None = None):
    scenario = load_scenario(path)
    pool = ServerPool(path.parent / "logs")
    try:
        endpoint = pool.endpoint(scenario.server)
        outcomes = measure(scenario, endpoint)
        if stats is not None:
            stats.update(requests.get(endpoint.url + "/stats", timeout=5).json())
        return outcomes
    finally:
        pool.close()


def test_vllm_adapter_reads_counter_deltas_around_each_request(tmp_path: Path) -> None:
    engine = {"accept_nums": [1, 3, 2, 4, 1], "vllm_k": 3}
    path = fake_scenario(
        tmp_path,
        "vllm",
        engine,
        adapter="vllm",
        speculative_tokens=3,
        matrix=[],
        requests=[
            {"id": f"r{i}", "messages": [{"role": "user", "content": "x"}]} for i in range(3)
        ],
    )
    outcomes = _measure(path)
    for outcome in outcomes:  # deltas, not running totals: every request reads the same
        assert outcome.error is None and outcome.invariant_failures == []
        assert outcome.fields["num_drafts"] == 4
        assert outcome.fields["num_draft_tokens"] == 12
        assert outcome.fields["num_accepted_tokens"] == 2 + 1 + 3
        assert outcome.fields["accepted_tokens_per_pos"] == [3, 2, 1]
        assert outcome.fields["completion_tokens"] == 11


def test_sglang_adapter_over_native_generate(tmp_path: Path) -> None:
    path = fake_scenario(
        tmp_path,
        "sgl",
        {"accept_nums": [1, 3, 2]},
        adapter="sglang",
        speculative_tokens=3,
        matrix=[],
        request_defaults={},  # /generate takes its sampling options inside sampling_params
        requests=[
            {
                "id": "g",
                "endpoint": "generate",
                "text": "hi",
                "sampling_params": {"max_new_tokens": 16},
            }
        ],
    )
    [outcome] = _measure(path)
    assert outcome.error is None and outcome.invariant_failures == []
    assert outcome.fields["spec_verify_ct"] == 3 and outcome.fields["completion_tokens"] == 6
    assert outcome.fields["average_accept_length"] == 2.0


def test_concurrent_requests_are_all_measured(tmp_path: Path) -> None:
    path = fake_scenario(
        tmp_path,
        "conc",
        {"accept_nums": [1, 2, 2], "gather_n": 8},
        concurrency=8,
        matrix=[],
        request_defaults={"max_tokens": 16},
        requests=[{"id": "p", "messages": [{"role": "user", "content": "x"}], "repeat": 8}],
    )
    stats: dict = {}
    outcomes = _measure(path, stats)
    assert [o.request_id for o in outcomes] == [f"p#{i}" for i in range(1, 9)]
    assert all(o.error is None and o.fields["accepted_tokens"] == 5 for o in outcomes)
    assert stats["max_in_flight"] == 8  # the server saw all eight at once


def test_request_timeout_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    path = fake_scenario(
        tmp_path, "slow", {"accept_nums": [1], "delay_s": 5}, matrix=[], request_timeout=1
    )
    [outcome] = _measure(path)
    assert outcome.error is not None
    assert "request 'hello'" in outcome.error and "timed out after 1 s" in outcome.error
