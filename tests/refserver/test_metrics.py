"""speculate_metrics formulas (SPEC §2) and the vLLM-named Prometheus counters."""

from __future__ import annotations

import pytest

from refserver.metrics import PrometheusCounters, RequestMetrics


def _steps_for_per_head(per_head: list[int]) -> list[int]:
    """accept_num per step that yields these per-head counts (steps = per_head[0])."""
    out = []
    for step in range(per_head[0]):
        out.append(sum(1 for c in per_head if c > step))
    return out


def test_fastdeploy_reference_capture():
    m = RequestMetrics(K=5)
    for a in _steps_for_per_head([51, 33, 13, 2, 1, 0]):
        m.record(a)
    d = m.to_dict()
    assert d["accepted_tokens_per_head"] == [51, 33, 13, 2, 1, 0]
    assert d["accepted_tokens"] == 100
    assert d["rejected_tokens"] == 206
    assert d["accept_ratio"] == pytest.approx(0.49)
    assert d["average_accept_length"] == pytest.approx(1.9608, abs=1e-4)
    expected = [0.647, 0.394, 0.154, 0.5, 0.0]
    assert d["accept_ratio_per_head"] == pytest.approx(expected, abs=1e-3)


def test_no_speculation_has_one_head():
    m = RequestMetrics(K=0)
    for _ in range(7):
        m.record(1)
    d = m.to_dict()
    assert d["accepted_tokens_per_head"] == [7]
    assert d["accept_ratio_per_head"] == []
    assert (d["accepted_tokens"], d["rejected_tokens"], d["accept_ratio"]) == (7, 0, 0.0)


def test_empty_and_out_of_range():
    assert RequestMetrics(K=3).to_dict()["accept_ratio"] == 0.0
    with pytest.raises(ValueError, match="accept_num=5"):
        RequestMetrics(K=3).record(5)


def test_prometheus_names_and_counts():
    c = PrometheusCounters("m", K=3)
    c.record_verify(num_draft_tokens=3, accept_num=3)  # drafts 1 and 2 reached the client
    c.record_verify(num_draft_tokens=2, accept_num=1)
    c.record_verify(num_draft_tokens=0, accept_num=1)  # no draft: not a draft
    text = c.render()
    assert 'vllm:spec_decode_num_drafts_total{model_name="m"} 2' in text
    assert 'vllm:spec_decode_num_draft_tokens_total{model_name="m"} 5' in text
    assert 'vllm:spec_decode_num_accepted_tokens_total{model_name="m"} 2' in text
    per_pos = 'vllm:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position='
    assert f'{per_pos}"0"}} 1' in text and f'{per_pos}"1"}} 1' in text
    assert f'{per_pos}"2"}} 0' in text
