"""The real server process over real HTTP, driven by the official `openai` client."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import threading
import time

import openai
import pytest
import requests

from e2e.adapters._prometheus import parse_prometheus
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
    """/metrics through the gate's parser, keyed by name plus any labels but model_name."""
    text = requests.get(url + "/metrics", timeout=10).text
    out = {}
    for name, labels, value in parse_prometheus(text):
        rest = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "model_name")
        out[f"{name}{{{rest}}}" if rest else name] = value
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
        os.kill(server.pid, signal.SIGTERM)  # to the server itself, mid-stream
        rest = list(stream)
        finishing = [c for c in rest if c.choices and c.choices[0].finish_reason]
        assert finishing and finishing[-1].choices[0].finish_reason == "length"
        assert finishing[-1].choices[0].model_extra["speculate_metrics"]["accepted_tokens"] == 20
        assert server.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url + "/health", timeout=2)
    finally:
        server.stop()
    assert "Application shutdown complete" in server.log_path.read_text()


# ------------------------------------------------------------------ issue 10: hostile input


def _chat_stream(url: str, body: dict) -> dict:
    """One streaming chat request over plain HTTP: text, finish reason, metrics, chunk list."""
    out = {"text": "", "finish": None, "metrics": None, "chunks": [], "done_at": None}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=300) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            out["chunks"].append(chunk)
            for c in chunk.get("choices") or []:
                out["text"] += c["delta"].get("content") or ""
                out["finish"] = c.get("finish_reason") or out["finish"]
                out["metrics"] = c.get("speculate_metrics") or out["metrics"]
    out["done_at"] = time.monotonic()
    return out


BAD_PARAMETERS = [  # (name, extra body fields, the param the 400 must name)
    ("seed 2**70", {"seed": 2**70, "temperature": 0.7}, "seed"),
    ("seed -(2**70)", {"seed": -(2**70), "temperature": 0.7}, "seed"),
    ("top_p 1e-46 (0 in float32)", {"top_p": 1e-46, "temperature": 1.0}, "top_p"),
    ("top_p 5e-324", {"top_p": 5e-324, "temperature": 1.0}, "top_p"),
    ("temperature 1e999 (inf)", {"temperature": 1e999}, "temperature"),
    ("max_tokens 2**70", {"max_tokens": 2**70}, "max_tokens"),
    ("min_tokens -1", {"min_tokens": -1}, "min_tokens"),
]


def test_bad_parameters_while_streams_run_fail_alone(hybrid_server):
    """Issue 10 item 1: each bad value gets a 400 naming it, and three streams that run
    meanwhile complete with their speculate_metrics and the same text as alone."""
    url = hybrid_server.url
    streams = [
        {"model": MODEL, "messages": [{"role": "user", "content": f"Count from {i} to {i + 40}."}],
         "max_tokens": 120, "min_tokens": 120, "temperature": 0, "stream": True}
        for i in range(3)
    ]  # fmt: skip
    alone = [_chat_stream(url, body) for body in streams]
    results: dict[int, dict] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, _chat_stream(url, streams[i])))
        for i in range(3)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while prometheus(url)["vllm:num_requests_running"] < 3:  # all three are in the engine
        assert time.monotonic() < deadline, "the three streams never ran together"
        time.sleep(0.05)
    answered = []
    for name, extra, param in BAD_PARAMETERS:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 8, **extra}
        data = json.dumps(body).replace("Infinity", "1e999")
        r = requests.post(
            url + "/v1/chat/completions", data=data, timeout=30,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert r.status_code == 400, (name, r.text)
        err = r.json()["error"]
        assert err["param"] == param and param in err["message"], (name, err)
        answered.append(time.monotonic())
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == [0, 1, 2]
    for i in range(3):
        got, ref = results[i], alone[i]
        assert got["done_at"] > answered[-1], "a stream ended before the bad requests were sent"
        assert got["finish"] == "length" and got["metrics"] is not None
        assert got["text"] == ref["text"]
        check_metrics(got["metrics"], 120)


def _open_nonstreaming(url: str, body: dict) -> socket.socket:
    """A real HTTP/1.1 client that sends a request and will hang up without reading."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def test_non_streaming_clients_that_disconnect_are_cancelled(hybrid_server):
    """Issue 10 item 2: four non-streaming clients hang up mid-generation; their slots are freed
    at the next engine step, and none of them runs to its 1500 tokens."""
    url = hybrid_server.url
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 1500, "min_tokens": 1500}
    before = prometheus(url)
    socks = [_open_nonstreaming(url, body) for _ in range(4)]
    deadline = time.monotonic() + 120
    while prometheus(url)["vllm:num_requests_running"] < 4:
        assert time.monotonic() < deadline, "the four requests never ran together"
        time.sleep(0.05)
    for s in socks:
        s.close()
    closed = time.monotonic()
    while prometheus(url)["vllm:num_requests_running"] != 0:
        assert time.monotonic() < closed + 60, "a disconnected request still holds its slot"
        time.sleep(0.05)
    freed_after = time.monotonic() - closed
    after = prometheus(url)
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    print(f"4 disconnected non-streaming requests freed {freed_after:.2f} s after the hang-up, "
          f"{generated:.0f} tokens generated in all")  # fmt: skip
    assert after["vllm:request_success_total"] == before["vllm:request_success_total"]
    assert generated < 4 * 1500


def test_health_answers_while_maximal_requests_are_prepared(hybrid_server):
    """Issue 10 item 3: parsing, templating and tokenizing run off the event loop. Requests at
    the body limit (1 MiB, a prompt as long as the byte bound lets through to the tokenizer) are
    sent back to back while /health is polled. Had the preparation run on the loop, a poll
    arriving during one would wait for the rest of it; the assertion compares the polls with
    the requests' own duration (a ratio, so it holds on a slow or loaded machine) and prints
    the absolute numbers."""
    url = hybrid_server.url
    limit = 1 << 20
    prompt = "lorem ipsum dolor sit amet, " * (2047 * 81 // 28 - 40)  # just under the byte bound
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "pad": ""}
    body["pad"] = "x" * (limit - len(json.dumps(body)))
    data = json.dumps(body).encode()
    assert len(data) == limit
    spans: list[tuple[float, float]] = []

    def send_big() -> None:
        for _ in range(4):
            start = time.monotonic()
            r = requests.post(url + "/v1/chat/completions", data=data, timeout=300,
                              headers={"Content-Type": "application/json"})  # fmt: skip
            spans.append((start, time.monotonic()))
            assert r.status_code == 400 and "tokens, longer than the context" in r.text, r.text

    sender = threading.Thread(target=send_big)
    sender.start()
    polls: list[tuple[float, float]] = []
    while sender.is_alive():
        start = time.monotonic()
        assert requests.get(url + "/health", timeout=60).status_code == 200
        polls.append((start, time.monotonic()))
        time.sleep(0.005)
    sender.join()
    # Polls sent while a big request was in flight, and how long each took to be answered.
    inside = [e - s for s, e in polls if any(a <= s <= b for a, b in spans)]
    durations = sorted(b - a for a, b in spans)
    print(f"{len(inside)} /health polls inside 4 requests of {limit} bytes "
          f"(each {durations[0] * 1000:.0f}-{durations[-1] * 1000:.0f} ms): worst "
          f"{max(inside, default=0) * 1000:.1f} ms, median "
          f"{sorted(inside)[len(inside) // 2] * 1000 if inside else 0:.1f} ms")  # fmt: skip
    assert len(inside) >= 4, "no /health poll overlapped a big request"
    assert sorted(inside)[len(inside) // 2] < 0.25 * durations[len(durations) // 2]


def test_checks_that_need_no_tokens_come_before_tokenizing(hybrid_server):
    """A 1 MB prompt is refused for its model name, n or max_tokens, not for its length, and a
    prompt whose bytes cannot fit the context is refused by its byte count, untokenized."""
    big = [{"role": "user", "content": "word " * 200_000}]
    cases = [
        ({"model": "gpt-4", "messages": big}, "model", "does not exist"),
        ({"model": MODEL, "messages": big, "n": 2}, "n", "n=2"),
        ({"model": MODEL, "messages": big, "max_tokens": 5000}, "max_tokens", "max_tokens=5000"),
        ({"model": MODEL, "messages": big}, "messages", "bytes: more than max_model_len - 1"),
    ]
    for body, param, says in cases:
        r = requests.post(hybrid_server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400, r.text[:200]
        err = r.json()["error"]
        assert err["param"] == param and says in err["message"], err


def test_body_over_the_limit_is_413(hybrid_server):
    url = hybrid_server.url + "/v1/chat/completions"
    data = json.dumps({"model": MODEL, "messages": CHAT, "pad": "x" * (1 << 20)}).encode()
    declared = requests.post(
        url, data=data, timeout=30, headers={"Content-Type": "application/json"}
    )
    chunked = requests.post(url, data=iter([data[:1000], data[1000:]]), timeout=30)
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["code"] == 413 and "--max-request-bytes" in err["message"]


PARSE_ERRORS = [  # (raw body, text the message must contain, param)
    (b"{not json", "not valid JSON", "body"),
    (b'{"model": "x", "messages": "\xff\xfe"}', "not valid UTF-8", "body"),
    (b"\xed\xa0\x80", "not valid UTF-8", "body"),  # a surrogate, UTF-8 encoded
    (
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]}
        ).encode(),
        "lone surrogate U+D800",
        "messages[0].content",
    ),
    (b'{"model": "x", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested", "body"),
    (b'{"model": "x", "messages": [], "temperature": NaN}', "NaN", "body"),
    (b'{"model": "x", "messages": [], "seed": ' + b"9" * 5000 + b"}", "digits", "body"),
    (b"[]", "JSON object", "body"),
    (b"", "not valid JSON", "body"),
]


@pytest.mark.parametrize(("raw", "named", "param"), PARSE_ERRORS, ids=lambda v: str(v)[:24])
def test_parse_errors_get_the_openai_error_shape(hybrid_server, raw, named, param):
    r = requests.post(hybrid_server.url + "/v1/chat/completions", data=raw, timeout=30,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert named in err["message"] and err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["code"] == 400


def test_unknown_paths_and_methods_get_the_openai_error_shape(hybrid_server):
    for method, path, code in [("POST", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)]:
        r = requests.request(method, hybrid_server.url + path, timeout=30)
        assert r.status_code == code
        assert r.json()["error"]["code"] == code and path in r.json()["error"]["message"]


def test_openapi_documents_what_the_server_returns(hybrid_server):
    spec = requests.get(hybrid_server.url + "/openapi.json", timeout=30).json()
    for path in ("/v1/chat/completions", "/v1/completions"):
        op = spec["paths"][path]["post"]
        assert sorted(op["responses"]) == ["200", "400", "413", "500"], op["responses"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
    codes = {c for p in spec["paths"].values() for op in p.values() for c in op["responses"]}
    assert "422" not in codes


# ------------------------------------------------------------------ issue 12: FastDeploy's names


def test_model_default_and_continuous_usage_stats(hybrid_server):
    """FastDeploy's e2e test sends "model": "default" and asks for usage on every chunk."""
    body = {
        "model": "default", "messages": CHAT, "max_tokens": 12, "min_tokens": 4, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }  # fmt: skip
    out = _chat_stream(hybrid_server.url, body)
    chunks = out["chunks"]
    assert all("usage" in c for c in chunks)
    completion = [c["usage"]["completion_tokens"] for c in chunks]
    assert completion == sorted(completion) and completion[0] == 0
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 12
    assert chunks[-2]["choices"][0]["speculate_metrics"]["accepted_tokens"] == 12
    for c in chunks:
        u = c["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    plain = dict(body, stream=False, stream_options=None)
    r = requests.post(hybrid_server.url + "/v1/chat/completions", json=plain, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == out["text"]
