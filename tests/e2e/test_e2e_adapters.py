"""Metric adapters on response bodies and metric texts in the engines' documented formats."""

from __future__ import annotations

import copy

import pytest

from e2e.adapters import (
    AdapterError,
    fastdeploy_measure,
    parse_prometheus,
    sglang_measure,
    vllm_counters,
    vllm_delta,
)
from e2e.client import _assemble
from e2e.invariants import Context, check_invariants
from e2e.scenario import RequestSpec

# SPEC §2's worked example (FastDeploy's own e2e baseline): 51 steps, K = 5.
SPEC_METRICS = {
    "accepted_tokens": 100,
    "rejected_tokens": 206,
    "accept_ratio": 0.49,
    "average_accept_length": 1.9608,
    "accepted_tokens_per_head": [51, 33, 13, 2, 1, 0],
    "accept_ratio_per_head": [0.647, 0.394, 0.154, 0.5, 0.0],
}
USAGE = {"prompt_tokens": 12, "completion_tokens": 100, "total_tokens": 112}


def chat(stream: bool) -> RequestSpec:
    body = {"messages": [{"role": "user", "content": "q"}], "max_tokens": 128, "stream": stream}
    return RequestSpec("r1", "chat", body)


def nonstream_body(metrics=SPEC_METRICS) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Newton's laws"},
                "finish_reason": "length",
                "speculate_metrics": metrics,
            }
        ],
        "usage": USAGE,
    }


def stream_chunks(metrics=SPEC_METRICS, on: int = -1) -> list[dict]:
    """Content chunks with metrics only on the last one, then the include_usage chunk."""
    pieces = ["New", "ton's", " laws"]
    chunks = []
    for piece in pieces:
        choice = {
            "index": 0,
            "delta": {"content": piece},
            "finish_reason": None,
            "speculate_metrics": None,
        }
        chunks.append({"object": "chat.completion.chunk", "choices": [choice]})
    chunks[on]["choices"][0]["speculate_metrics"] = metrics
    chunks[-1]["choices"][0]["finish_reason"] = "length"
    chunks.append({"object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    return chunks


def fd_invariants(fields: dict, errors=()) -> list[str]:
    return check_invariants("fastdeploy", Context(fields, 5, 128, tuple(errors)))


def test_fastdeploy_nonstreaming_reads_choices_metrics_and_spec_example_holds() -> None:
    completion = _assemble(chat(False), nonstream_body(), [], 0.1)
    m = fastdeploy_measure(completion)
    assert m.fields == {**SPEC_METRICS, "completion_tokens": 100}
    assert m.placement_errors == []
    assert fd_invariants(m.fields) == []


def test_fastdeploy_streaming_reads_last_content_chunk_before_usage_chunk() -> None:
    completion = _assemble(chat(True), None, stream_chunks(), 0.1)
    assert completion.text == "Newton's laws"
    m = fastdeploy_measure(completion)
    assert m.fields["accepted_tokens_per_head"] == [51, 33, 13, 2, 1, 0]
    assert m.fields["completion_tokens"] == 100
    assert m.placement_errors == []


def test_fastdeploy_streaming_metrics_on_an_earlier_chunk_is_a_placement_violation() -> None:
    completion = _assemble(chat(True), None, stream_chunks(on=0), 0.1)
    m = fastdeploy_measure(completion)
    assert m.placement_errors and "last chunk" in m.placement_errors[0]
    assert any(
        e.startswith("metrics_placement") for e in fd_invariants(m.fields, m.placement_errors)
    )


def test_fastdeploy_missing_metrics_is_a_clear_error() -> None:
    body = nonstream_body()
    del body["choices"][0]["speculate_metrics"]
    with pytest.raises(AdapterError, match=r"r1.*choices\[0\]\.speculate_metrics"):
        fastdeploy_measure(_assemble(chat(False), body, [], 0.1))


@pytest.mark.parametrize(
    ("change", "invariant"),
    [
        ({"accepted_tokens_per_head": [51, 33, 13, 2, 1]}, "per_head_length"),
        (
            {"accepted_tokens_per_head": [51, 33, 13, 2, 3, 0], "accepted_tokens": 102},
            "per_head_non_increasing",
        ),
        ({"accepted_tokens": 99}, "accepted_consistent"),
        ({"rejected_tokens": 176}, "rejected_consistent"),
        ({"accept_ratio": 0.54}, "ratios_consistent"),
        ({"accept_ratio_per_head": [0.647, 0.394, 0.154, 0.5]}, "ratios_consistent"),
    ],
)
def test_each_broken_invariant_is_reported_by_name(change: dict, invariant: str) -> None:
    metrics = {**copy.deepcopy(SPEC_METRICS), **change}
    m = fastdeploy_measure(_assemble(chat(False), nonstream_body(metrics), [], 0.1))
    failures = fd_invariants(m.fields)
    assert any(f.startswith(invariant + ":") for f in failures), failures


def test_completion_tokens_mismatch_with_usage_is_reported() -> None:
    body = nonstream_body()
    body["usage"] = {**USAGE, "completion_tokens": 98}
    m = fastdeploy_measure(_assemble(chat(False), body, [], 0.1))
    assert any("usage.completion_tokens = 98" in f for f in fd_invariants(m.fields))


# vLLM /metrics, as its Prometheus exporter writes it (counters with _total and _created).
VLLM_BEFORE = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="Qwen/Qwen3-8B"} 10.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="Qwen/Qwen3-8B"} 1.7e+09
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="Qwen/Qwen3-8B"} 30.0
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="Qwen/Qwen3-8B"} 12.0
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="Qwen/Qwen3-8B",position="0"} 7.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="Qwen/Qwen3-8B",position="1"} 4.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="Qwen/Qwen3-8B",position="2"} 1.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 0.0
"""


def _after(drafts, draft_tokens, accepted, pos) -> str:
    text = VLLM_BEFORE
    text = text.replace(
        'drafts_total{engine="0",model_name="Qwen/Qwen3-8B"} 10.0',
        f'drafts_total{{engine="0",model_name="Qwen/Qwen3-8B"}} {drafts}',
    )
    text = text.replace("} 30.0", f"}} {draft_tokens}").replace("} 12.0", f"}} {accepted}")
    for p, v in enumerate(pos):
        old = f'position="{p}"}} {[7.0, 4.0, 1.0][p]}'
        text = text.replace(old, f'position="{p}"}} {v}')
    return text


def test_vllm_counters_are_parsed_and_deltas_become_per_request_fields() -> None:
    before = vllm_counters(VLLM_BEFORE)
    assert (before.drafts, before.draft_tokens, before.accepted_tokens) == (10, 30, 12)
    assert before.per_pos == {0: 7, 1: 4, 2: 1}
    after = vllm_counters(_after(18.0, 54.0, 23.0, [13.0, 8.0, 2.0]))
    fields = vllm_delta(before, after)
    assert fields["num_drafts"] == 8
    assert fields["num_draft_tokens"] == 24
    assert fields["num_accepted_tokens"] == 11
    assert fields["accepted_tokens_per_pos"] == [6, 4, 1]
    assert fields["mean_acceptance_length"] == pytest.approx(1 + 11 / 8)
    assert fields["draft_acceptance_rate"] == pytest.approx(11 / 24)
    ctx = Context({**fields, "completion_tokens": 19}, 3, 64)
    assert check_invariants("vllm", ctx) == []


def test_vllm_counters_sum_over_engines_and_accept_names_without_total() -> None:
    text = (
        'vllm:spec_decode_num_drafts{engine="0"} 2\n'
        'vllm:spec_decode_num_drafts{engine="1"} 3\n'
        'vllm:spec_decode_num_draft_tokens{engine="0"} 10\n'
        'vllm:spec_decode_num_accepted_tokens{engine="0"} 4\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos{engine="0",position="0"} 3\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos{engine="1",position="0"} 1\n'
    )
    counters = vllm_counters(text)
    assert counters.drafts == 5 and counters.per_pos == {0: 4}


def test_vllm_broken_per_pos_is_an_invariant_failure() -> None:
    fields = {
        "num_drafts": 4,
        "num_draft_tokens": 12,
        "num_accepted_tokens": 5,
        "accepted_tokens_per_pos": [2, 3, 0],
        "completion_tokens": 9,
    }
    failures = check_invariants("vllm", Context(fields, 3, 64))
    assert any("increases" in f for f in failures)
    assert not any("sum(" in f for f in failures)  # the sum (5) is right; only the order is wrong


def test_prometheus_label_escapes_and_bad_lines() -> None:
    samples = parse_prometheus('m{a="x\\"y",b="c\\\\d"} 1.5 1700000000\n')
    assert samples == [("m", {"a": 'x"y', "b": "c\\d"}, 1.5)]
    with pytest.raises(AdapterError, match="line 1"):
        parse_prometheus("this is not a sample\n")
    with pytest.raises(AdapterError, match="no vllm:spec_decode"):
        vllm_counters("vllm:num_requests_running 0\n")


def test_sglang_meta_info_of_native_generate() -> None:
    request = RequestSpec(
        "g1", "generate", {"text": "hi", "sampling_params": {"max_new_tokens": 96}}
    )
    body = {
        "text": "out",
        "meta_info": {
            "id": "a",
            "prompt_tokens": 5,
            "completion_tokens": 96,
            "spec_verify_ct": 40,
            "spec_accept_length": 2.4,
            "finish_reason": {"type": "length"},
            "e2e_latency": 1.2,
        },
    }
    completion = _assemble(request, body, [], 0.1)
    assert completion.finish_reason == "length"
    m = sglang_measure(completion)
    assert m.fields["spec_verify_ct"] == 40
    assert m.fields["average_accept_length"] == pytest.approx(2.4)
    assert "e2e_latency" not in m.fields  # timings are not acceptance metrics
    assert check_invariants("sglang", Context(m.fields, 3, 96)) == []
    bad = Context({**m.fields, "spec_verify_ct": 10}, 3, 96)
    assert any("spec_verify_ct*(K+1)" in f for f in check_invariants("sglang", bad))


def test_sglang_without_spec_verify_ct_is_a_clear_error() -> None:
    request = RequestSpec("g1", "generate", {"text": "hi"})
    completion = _assemble(request, {"text": "x", "meta_info": {"completion_tokens": 3}}, [], 0.1)
    with pytest.raises(AdapterError, match="spec_verify_ct"):
        sglang_measure(completion)
