"""Fuzzing a real refserver process through its own OpenAPI schema (issue 10).

schemathesis generates requests from the schema the server serves, positive (schema-valid) and
negative (schema-violating), and hypothesis adds raw byte bodies. Every response must be a
documented status with a documented content type, never a 5xx, and every error must be the
OpenAI error object, raw byte bodies included (invalid JSON and UTF-8, deep nesting, lone
surrogates in otherwise valid requests). Half of the schema-valid chat/completion bodies get the
served model name, so generation runs too, not only the model check. Bounded in examples and in wall time (the
server runs with a 128-token context so that a valid request stays short); the counts are
printed. Afterwards the server must still serve a good request.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import requests

from e2e.server import log_excerpt
from tests.refserver.helpers import MODEL, NGRAM, launch_server

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# (examples, seconds) per POST operation and mode; cases past an operation's seconds are generated
# but not sent. About 45 s of fuzzing in all, plus the server's start.
BOUNDS = {"positive": (150, 12.0), "negative": (80, 8.0), "raw": (150, 6.0)}
GET_EXAMPLES = 5
REQUEST_TIMEOUT_S = 30.0  # a hang is a failure


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    server = launch_server(
        tmp_path_factory.mktemp("fuzz"),
        "--speculative-config", NGRAM,
        "--max-model-len", "128",
        "--max-num-seqs", "4",
    )  # fmt: skip
    yield server
    code = server.stop()
    print(f"fuzz refserver exit code {code}")
    assert code == 0, log_excerpt(server.log_path, 30)


class Tally:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.deadline = 0.0
        self.sent = 0
        self.unsent = 0
        self.by_status: Counter[str] = Counter()
        self.by_operation: Counter[str] = Counter()
        self.refused_param: Counter[str] = Counter()  # what the 400s named, served model only

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


def _chat_with_text(codepoints: list[int]) -> bytes:
    text = "".join(map(chr, codepoints))
    messages = [{"role": "user", "content": text}]
    return json.dumps({"model": MODEL, "messages": messages, "max_tokens": 1}).encode()


def _check_error_shape(response: requests.Response) -> None:
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert error["code"] == response.status_code


def test_fuzz_the_served_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    tally = Tally()
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /health",
    }

    def fuzz(operation, mode_name: str, examples: int, seconds: float):
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run: a failure reproduces
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode_name)),
            served=st.booleans(),
        )
        def one(case, served):
            if tally.out_of_time():
                tally.unsent += 1
                return
            if mode_name == "positive" and served and isinstance(case.body, dict):
                case.body["model"] = MODEL
            response = case.call(
                base_url=fuzz_server.url, session=session, timeout=REQUEST_TIMEOUT_S
            )
            tally.sent += 1
            tally.by_status[str(response.status_code)] += 1
            tally.by_operation[f"{operation.label} ({mode_name})"] += 1
            case.validate_response(response, checks=CHECKS)
            _check_error_shape(response)
            if served and mode_name == "positive" and response.status_code == 400:
                tally.refused_param[str(response.json()["error"]["param"])] += 1

        tally.start(seconds)
        one()

    for operation in operations:
        if not operation.label.startswith("POST"):  # no parameters: nothing to violate
            fuzz(operation, "positive", GET_EXAMPLES, 5.0)
            continue
        for mode_name in ("positive", "negative"):
            fuzz(operation, mode_name, *BOUNDS[mode_name])

    @settings(max_examples=BOUNDS["raw"][0], deadline=None, database=None, derandomize=True)
    @given(
        path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
        raw=st.one_of(
            st.binary(max_size=200),
            st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.recursive(st.just(b"1"), lambda inner: inner.map(lambda b: b"[" + b + b"]")),
            st.lists(st.integers(0xD800, 0xDFFF) | st.integers(32, 126), max_size=8).map(
                _chat_with_text  # valid JSON, but lone surrogates are not text
            ),
        ),
    )
    def raw_body(path, raw):
        if tally.out_of_time():
            tally.unsent += 1
            return
        response = session.post(
            fuzz_server.url + path,
            data=raw,
            headers={"Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )
        tally.sent += 1
        tally.by_status[str(response.status_code)] += 1
        tally.by_operation[f"POST {path} (raw bytes)"] += 1
        assert response.status_code < 500, (raw[:80], response.text[:200])
        _check_error_shape(response)

    tally.start(BOUNDS["raw"][1])
    raw_body()

    elapsed = time.monotonic() - tally.started
    print(f"\nfuzz: {tally.sent} cases sent in {elapsed:.0f} s ({tally.unsent} generated past "
          f"their operation's time bound, not sent); status histogram "
          f"{dict(sorted(tally.by_status.items()))}")  # fmt: skip
    for label, count in sorted(tally.by_operation.items()):
        print(f"  {count:4d}  {label}")
    print(f"  schema-valid bodies with the served model, refused for: {dict(tally.refused_param)}")
    untested = {op.label for op in operations} - {k.split(" (")[0] for k in tally.by_operation}
    assert not untested, f"no case was sent to {untested}"
    assert not any(code.startswith("5") for code in tally.by_status)

    assert session.get(fuzz_server.url + "/health", timeout=10).status_code == 200
    good = session.post(
        fuzz_server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}],
              "max_tokens": 8, "temperature": 0},
        timeout=60,
    )  # fmt: skip
    assert good.status_code == 200, good.text
    assert good.json()["choices"][0]["speculate_metrics"]["accepted_tokens"] >= 1
