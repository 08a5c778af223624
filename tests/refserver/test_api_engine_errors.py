"""An engine failure reaches its client as an error, in the OpenAI shape, and nobody else's.

The API validates every parameter, so no request can make the real engine raise any more. To
exercise the path that answers an engine failure anyway, the engine's prefill is wrapped to raise
for requests with max_tokens=7 (a planted bug: the only fake here). Everything else is real: the
model, the engine thread, the FastAPI app and uvicorn over HTTP, in this process.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from e2e.ports import release_port, reserve_port
from refserver.config import EngineConfig, SpeculativeConfig
from refserver.engine import Engine
from tests.refserver.helpers import MODEL, NGRAM

CHAT = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def planted_server(model_and_tokenizer):
    uvicorn = pytest.importorskip("uvicorn")
    from refserver.api import create_app

    model, tok = model_and_tokenizer
    engine = Engine(EngineConfig(speculative=SpeculativeConfig.from_json(NGRAM)), model, tok)
    real_prefill = engine._prefill

    def prefill(seq):
        if seq.req.params.max_tokens == 7:
            raise RuntimeError("planted bug")
        return real_prefill(seq)

    engine._prefill = prefill
    port = reserve_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=60)
    release_port(port)


def test_non_streaming_engine_failure_is_a_500_error_object(planted_server):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 7, "temperature": 0}
    r = requests.post(planted_server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "internal_server_error" and "planted bug" in err["message"]


def test_streaming_engine_failure_ends_the_stream_with_an_error_event(planted_server):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 7, "temperature": 0, "stream": True}
    r = requests.post(planted_server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200  # the status line went out before the engine ran
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == 500 and "planted bug" in err["message"]


def test_the_others_are_served_meanwhile(planted_server):
    results: dict[int, requests.Response] = {}

    def send(i: int) -> None:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 7 if i % 2 else 12,
                "temperature": 0}  # fmt: skip
        results[i] = requests.post(planted_server + "/v1/chat/completions", json=body, timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(6))
    for i, r in results.items():
        if i % 2:
            assert r.status_code == 500 and "planted bug" in r.json()["error"]["message"]
        else:
            assert r.status_code == 200, r.text
            metrics = r.json()["choices"][0]["speculate_metrics"]
            assert metrics["accepted_tokens"] == r.json()["usage"]["completion_tokens"] >= 1
