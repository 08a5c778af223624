"""The real server process over real HTTP, driven by the official `openai` client."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time

import openai
import pytest
import requests

from tests.refserver.helpers import MODEL, launch_server

CHAT = [
    {"role": "user", "content": "Repeat this list: apples, pears, plums, apples, pears, plums."}
]


@pytest.fixture(scope="module")
def client(hybrid_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=hybrid_server.url + "/v1", api_key="unused", max_retries=0)


def check_metrics(metrics: dict, completion_tokens: int, K: int = 5) -> None:
    per_head = metrics["accepted_tokens_per_head"]
    assert len(per_head) == K + 1 and len(metrics["accept_ratio_per_head"]) == K
    assert all(a >= b for a, b in itertools.pairwise(per_head))
    assert metrics["accepted_tokens"] == sum(per_head) == completion_tokens
    assert metrics["rejected_tokens"] == per_head[0] * (K + 1) - completion_tokens
    assert metrics["average_accept_length"] == pytest.approx(completion_tokens / per_head[0])


def prometheus(url: str) -> dict[str, float]:
    text = requests.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[re.sub(r'model_name="[^"]*",?', "", name).replace("{}", "")] = float(value)
    return out


def test_models_and_health(client, hybrid_server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert requests.get(hybrid_server.url + "/health", timeout=5).status_code == 200


def test_chat_non_streaming_with_logprobs(client, hybrid_server):
    before = prometheus(hybrid_server.url)
    r = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=24, temperature=0, top_p=0, seed=42,
        logprobs=True, top_logprobs=5,
    )  # fmt: skip
    after = prometheus(hybrid_server.url)
    choice = r.choices[0]
    metrics = choice.model_extra["speculate_metrics"]
    check_metrics(metrics, r.usage.completion_tokens)
    assert len(choice.logprobs.content) == r.usage.completion_tokens
    for entry in choice.logprobs.content:
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy picks the top
    # vLLM counters move exactly as the request's per-head counts (request sent alone).
    per_head = metrics["accepted_tokens_per_head"]
    for i in range(5):
        key = f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}}'
        assert after[key] - before[key] == per_head[i + 1]
    accepted = after["vllm:spec_decode_num_accepted_tokens_total"]
    accepted -= before["vllm:spec_decode_num_accepted_tokens_total"]
    assert accepted == sum(per_head[1:])


def test_chat_streaming_metrics_placement(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=24, temperature=0, seed=42)
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunk, content_chunks = chunks[-1], chunks[:-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == (
        full.choices[0].message.content
    )
    metrics = [c.choices[0].model_extra.get("speculate_metrics") for c in content_chunks]
    assert all(m is None for m in metrics[:-1]) and metrics[-1] is not None
    assert content_chunks[-1].choices[0].finish_reason is not None
    check_metrics(metrics[-1], usage_chunk.usage.completion_tokens)
    assert usage_chunk.usage.completion_tokens == full.usage.completion_tokens


def test_completions_stream_and_not(client):
    prompt = "one two three four, one two three four, one two three"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, logprobs=3
    )
    choice = r.choices[0]
    assert len(choice.logprobs.tokens) == r.usage.completion_tokens
    assert all(len(t) <= 3 for t in choice.logprobs.top_logprobs)
    check_metrics(choice.model_extra["speculate_metrics"], r.usage.completion_tokens)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].model_extra["speculate_metrics"] is not None


def test_stop_and_min_tokens(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=30,
        temperature=0,
        stop=["pears"],
        extra_body={"min_tokens": 2},
    )
    assert "pears" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    check_metrics(r.choices[0].model_extra["speculate_metrics"], r.usage.completion_tokens)


BAD_REQUESTS = [
    ("{not json", "json"),
    (json.dumps({"model": MODEL, "messages": "hi"}), "messages"),
    (json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": "lots"}), "max_tokens"),
    (json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 0}), "max_tokens"),
    (json.dumps({"model": MODEL, "messages": []}), "messages"),
    (
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x " * 3000}]}),
        "context",
    ),
    (json.dumps({"model": "gpt-4", "messages": CHAT}), "gpt-4"),
    (json.dumps({"model": MODEL, "messages": CHAT, "top_logprobs": 21, "logprobs": True}), "21"),
    (json.dumps({"model": MODEL, "messages": CHAT, "temperature": -1}), "temperature"),
]


def test_burst_of_bad_requests_then_a_good_one(hybrid_server, client):
    for body, named in BAD_REQUESTS:
        r = requests.post(
            hybrid_server.url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 400, (body[:60], r.text)
        err = r.json()["error"]
        assert named.lower() in err["message"].lower(), (body[:60], err)
        assert err["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=CHAT)
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1


def test_sixteen_concurrent_streaming_clients(client):
    results: dict[int, tuple[str, dict, int]] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            messages = [{"role": "user", "content": f"Count from {i} to {i + 5}, comma separated."}]
            text, metrics, usage = "", None, None
            stream = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=10, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage.completion_tokens
                for c in chunk.choices:
                    text += c.delta.content or ""
                    metrics = c.model_extra.get("speculate_metrics") or metrics
            results[i] = (text, metrics, usage)
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == list(range(16))
    for text, metrics, usage in results.values():
        assert text and usage is not None
        check_metrics(metrics, usage)


def test_client_disconnect_frees_its_slot(hybrid_server):
    body = {
        "model": MODEL,
        "messages": CHAT,
        "max_tokens": 1500,
        "stream": True,
        "min_tokens": 1500,
    }
    with requests.post(
        hybrid_server.url + "/v1/chat/completions", json=body, stream=True, timeout=60
    ) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(b"chat.completion.chunk" in line for line in got)
        assert prometheus(hybrid_server.url)["vllm:num_requests_running"] == 1
    # The response is closed: the server must notice and free the slot long before 1500 tokens.
    deadline = time.monotonic() + 60
    while prometheus(hybrid_server.url)["vllm:num_requests_running"] != 0:
        assert time.monotonic() < deadline, "the disconnected request still holds its slot"
        time.sleep(0.5)


def test_sigterm_drains_in_flight_requests_and_exits_cleanly(tmp_path):
    server = launch_server(tmp_path)  # no speculation: the lifecycle is what is tested here
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=20,
            temperature=0,
            stream=True,
            extra_body={"min_tokens": 20},
        )
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        server.proc.send_signal(15)  # SIGTERM to the server itself, mid-stream
        rest = list(stream)
        finishing = [c for c in rest if c.choices and c.choices[0].finish_reason]
        assert finishing and finishing[-1].choices[0].finish_reason == "length"
        assert finishing[-1].choices[0].model_extra["speculate_metrics"]["accepted_tokens"] == 20
        assert server.proc.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url + "/health", timeout=2)
    finally:
        server.terminate()
    assert "Application shutdown complete" in server.log_path.read_text()
