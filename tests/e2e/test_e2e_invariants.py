"""The structural checks of FastDeploy's own e2e test as gate invariants: each holds on a
response shaped like refserver's and FastDeploy's, and each reports the break it exists for."""

from __future__ import annotations

import copy

import pytest

from e2e.client import Completion
from e2e.invariants import Context, check_invariants
from e2e.scenario import RequestSpec

METRICS = {
    "accepted_tokens": 12,
    "rejected_tokens": 24,
    "accept_ratio": 0.5,
    "average_accept_length": 2.0,
    "accepted_tokens_per_head": [6, 4, 2, 0, 0, 0],
    "accept_ratio_per_head": [0.6666666666666666, 0.5, 0.0, 0.0, 0.0],
}
STREAM_BODY = {
    "model": "default",
    "messages": [{"role": "user", "content": "牛顿的三大运动定律是什么？"}],
    "max_tokens": 50,
    "min_tokens": 10,
    "temperature": 0,
    "top_p": 0,
    "seed": 42,
    "stream": True,
    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    "logprobs": True,
    "top_logprobs": 5,
}


def lp(token: str, n: int = 5) -> dict:
    top = [{"token": f"t{i}", "logprob": -float(i), "bytes": [116]} for i in range(n)]
    return {"token": token, "logprob": -0.1, "bytes": list(token.encode()), "top_logprobs": top}


def usage(done: int) -> dict:
    return {"prompt_tokens": 20, "completion_tokens": done, "total_tokens": 20 + done}


def stream_chunks() -> list[dict]:
    """A stream as refserver sends it: role chunk, content chunks, the finishing chunk with the
    metrics, then the usage-only chunk (usage on every chunk: continuous_usage_stats)."""

    def choice(text, done, finish=None, metrics=None):
        return {"index": 0, "delta": {"content": text}, "logprobs": {"content": [lp(text)]},
                "finish_reason": finish, "speculate_metrics": metrics}  # fmt: skip

    return [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "usage": usage(0),
        },
        {"choices": [choice("牛顿", 6)], "usage": usage(6)},
        {"choices": [choice("定律", 12, "length", METRICS)], "usage": usage(12)},
        {"choices": [], "usage": usage(12)},
    ]


def completion(body: dict, chunks: list[dict] | None = None, response: dict | None = None):
    request = RequestSpec("newton", "chat", body)
    if response is not None:
        choice = response["choices"][0]
        return Completion(request, choice["message"]["content"], choice["finish_reason"],
                          response.get("usage"), response, [], [], 0.1)  # fmt: skip
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    last_usage = next((c["usage"] for c in reversed(chunks) if c.get("usage")), None)
    return Completion(request, text, "length", last_usage, None, chunks, [], 0.1)


def failures(c: Completion) -> list[str]:
    fields = {**METRICS, "completion_tokens": (c.usage or {}).get("completion_tokens", 12)}
    return check_invariants("fastdeploy", Context(fields, 5, 50, (), completion=c))


def test_refserver_and_fastdeploy_shaped_responses_pass() -> None:
    assert failures(completion(STREAM_BODY, stream_chunks())) == []
    body = {k: v for k, v in STREAM_BODY.items() if k not in ("stream", "stream_options")}
    response = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "牛顿定律"},
                     "logprobs": {"content": [lp("牛"), lp("顿")]}, "finish_reason": "length",
                     "speculate_metrics": METRICS}],
        "usage": usage(12),
    }  # fmt: skip
    assert failures(completion(body, response=response)) == []


def _break(chunks: list[dict], how: str) -> dict:
    body = copy.deepcopy(STREAM_BODY)
    if how == "empty text":
        for c in chunks[1:3]:
            c["choices"][0]["delta"]["content"] = ""
    elif how == "total":
        chunks[-1]["usage"]["total_tokens"] = 99
    elif how == "min_tokens":
        body["min_tokens"] = 13
    elif how == "no usage chunk":
        chunks.pop()
    elif how == "metrics too early":
        chunks[1]["choices"][0]["speculate_metrics"] = METRICS
        chunks[2]["choices"][0]["speculate_metrics"] = None
    elif how == "extra key":
        chunks[2]["choices"][0]["speculate_metrics"] = {**METRICS, "draft_time_ms": 3.0}
    elif how == "missing key":
        chunks[2]["choices"][0]["speculate_metrics"] = {
            k: v for k, v in METRICS.items() if k != "accept_ratio"
        }
    elif how == "six alternatives":
        chunks[1]["choices"][0]["logprobs"]["content"][0] = lp("x", 6)
    elif how == "no logprob":
        del chunks[1]["choices"][0]["logprobs"]["content"][0]["logprob"]
    elif how == "no logprobs at all":
        for c in chunks[1:3]:
            c["choices"][0]["logprobs"] = None
    return body


@pytest.mark.parametrize(
    ("how", "invariant", "says"),
    [
        ("empty text", "text_not_empty", "empty"),
        ("total", "usage_consistent", "total_tokens = 99"),
        ("min_tokens", "usage_consistent", "< min_tokens = 13"),
        ("no usage chunk", "metrics_before_usage", "usage-only"),
        ("metrics too early", "metrics_before_usage", "chunks[-2]"),
        ("extra key", "speculate_keys_exact", "extra ['draft_time_ms']"),
        ("missing key", "speculate_keys_exact", "missing ['accept_ratio']"),
        ("six alternatives", "logprobs_shape", "6 top_logprobs, more than the 5"),
        ("no logprob", "logprobs_shape", "lacks ['logprob']"),
        ("no logprobs at all", "logprobs_shape", "none came back"),
    ],
)
def test_each_structural_break_is_reported_by_name(how: str, invariant: str, says: str) -> None:
    chunks = stream_chunks()
    body = _break(chunks, how)
    found = [f for f in failures(completion(body, chunks)) if f.startswith(invariant + ":")]
    assert found and says in found[0], failures(completion(body, chunks))


def test_checks_that_need_the_raw_response_skip_without_it() -> None:
    assert (
        check_invariants("fastdeploy", Context({**METRICS, "completion_tokens": 12}, 5, 50)) == []
    )
