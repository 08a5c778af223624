"""SSE parsing and response assembly of the HTTP client."""

from __future__ import annotations

import json

from e2e.client import _assemble, iter_sse_data
from e2e.scenario import RequestSpec


def test_sse_events_multiline_comments_and_done() -> None:
    lines = [
        b": keep-alive comment",
        b"event: message",
        b'data: {"a": 1}',
        b"",
        b'data:{"b":',
        b"data: 2}",
        b"",
        b"",
        b"id: 7",
        b"data: [DONE]",
        b"",
        b'data: {"after": "done"}',
        b"",
    ]
    assert list(iter_sse_data(lines)) == ['{"a": 1}', '{"b":\n2}']


def test_sse_crlf_and_unterminated_last_event() -> None:
    lines = ['data: {"x": 1}\r', "\r", 'data: {"y": 2}']
    assert [json.loads(p) for p in iter_sse_data(lines)] == [{"x": 1}, {"y": 2}]


def test_chat_stream_assembles_text_usage_and_logprobs() -> None:
    request = RequestSpec("s", "chat", {"messages": [], "stream": True, "logprobs": True})
    top = [{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.0}]
    chunks = [
        {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
        {
            "choices": [
                {
                    "delta": {"content": "A"},
                    "logprobs": {"content": [{"token": "A", "logprob": -0.1, "top_logprobs": top}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "delta": {"content": "!"},
                    "finish_reason": "stop",
                    "logprobs": {"content": [{"token": "!", "logprob": -0.3, "top_logprobs": []}]},
                }
            ]
        },
        {"choices": [], "usage": {"completion_tokens": 2}},
    ]
    completion = _assemble(request, None, chunks, 0.5)
    assert completion.text == "A!"
    assert completion.finish_reason == "stop"
    assert completion.usage == {"completion_tokens": 2}
    assert [t.token for t in completion.tokens] == ["A", "!"]
    assert completion.tokens[0].top == [("A", -0.1), ("B", -2.0)]


def test_legacy_completion_logprobs_are_normalised() -> None:
    request = RequestSpec("c", "completion", {"prompt": "x", "logprobs": 2})
    body = {
        "choices": [
            {
                "text": "ab",
                "finish_reason": "length",
                "logprobs": {
                    "tokens": ["a", "b"],
                    "token_logprobs": [-0.5, -0.25],
                    "top_logprobs": [{"z": -3.0, "a": -0.5}, {"b": -0.25, "c": -1.0}],
                },
            }
        ],
        "usage": {"completion_tokens": 2},
    }
    completion = _assemble(request, body, [], 0.1)
    assert completion.text == "ab"
    assert completion.tokens[0].top == [("a", -0.5), ("z", -3.0)]
