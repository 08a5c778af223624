"""HTTP client for OpenAI-style (and SGLang native) endpoints, through `requests` only.

Streaming responses are Server-Sent Events. Every request has a deadline: socket reads time out,
and a stream that keeps trickling past the deadline is cut, each with an error naming the request.
The result keeps the raw body or chunks, so metric adapters read exactly what the server sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from e2e.scenario import RequestSpec

PATHS = {"chat": "/v1/chat/completions", "completion": "/v1/completions", "generate": "/generate"}


class RequestError(RuntimeError):
    """A request failed: HTTP error, malformed body, or timeout. The message names the request."""


class RequestTimeoutError(RequestError):
    pass


@dataclass
class TokenLogprob:
    """One generated token with its logprob and the server's top alternatives at that position."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Completion:
    request: RequestSpec
    text: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    body: dict[str, Any] | None  # non-streaming response body
    chunks: list[dict[str, Any]]  # streaming: every parsed data event, in order
    tokens: list[TokenLogprob]  # empty when the request did not ask for logprobs
    latency_s: float


def iter_sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The `data` payloads of an SSE stream, one per event, stopping at `[DONE]`.

    Follows the SSE rules that matter here: an event ends at a blank line, several `data:` lines
    of one event are joined with newlines, one space after the colon is dropped, and comment
    lines (starting with ':') and other fields (event, id, retry) are ignored.
    """
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r")
        if line == "":
            if data:
                payload = "\n".join(data)
                data = []
                if payload.strip() == "[DONE]":
                    return
                yield payload
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
    if data:
        payload = "\n".join(data)
        if payload.strip() != "[DONE]":
            yield payload


def send(base_url: str, request: RequestSpec, timeout_s: float) -> Completion:
    url = base_url.rstrip("/") + PATHS[request.endpoint]
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        response = requests.post(
            url, json=request.body, stream=request.stream, timeout=(min(10.0, timeout_s), timeout_s)
        )
    except requests.Timeout as exc:
        raise RequestTimeoutError(
            f"request {request.id!r} to {url} timed out after {timeout_s:g} s"
        ) from exc
    except requests.RequestException as exc:
        raise RequestError(f"request {request.id!r} to {url} failed: {exc}") from exc
    with response:
        if response.status_code != 200:
            raise RequestError(
                f"request {request.id!r} to {url}: HTTP {response.status_code}: "
                f"{response.text[:500]}"
            )
        try:
            if request.stream:
                chunks = []
                for payload in iter_sse_data(response.iter_lines(delimiter=b"\n")):
                    chunks.append(_json(payload, request, url))
                    if time.monotonic() > deadline:
                        raise RequestTimeoutError(
                            f"request {request.id!r} to {url}: stream still running after "
                            f"{timeout_s:g} s (deadline)"
                        )
                body = None
            else:
                body = _json(response.text, request, url)
                chunks = []
        except requests.Timeout as exc:
            raise RequestTimeoutError(
                f"request {request.id!r} to {url} timed out after {timeout_s:g} s"
            ) from exc
        except requests.RequestException as exc:
            raise RequestError(
                f"request {request.id!r} to {url} failed mid-response: {exc}"
            ) from exc
    latency = time.monotonic() - started
    try:
        return _assemble(request, body, chunks, latency)
    except (KeyError, IndexError, TypeError) as exc:
        raise RequestError(
            f"request {request.id!r} to {url}: unexpected response shape "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _json(text: str, request: RequestSpec, url: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"request {request.id!r} to {url}: response is not JSON: {text[:200]!r}"
        ) from exc
    if not isinstance(value, dict):
        raise RequestError(
            f"request {request.id!r} to {url}: expected a JSON object, got {value!r}"
        )
    return value


def _assemble(
    request: RequestSpec, body: dict[str, Any] | None, chunks: list[dict[str, Any]], latency: float
) -> Completion:
    if request.endpoint == "generate":
        return _assemble_generate(request, body, chunks, latency)
    usage = None
    finish = None
    tokens: list[TokenLogprob] = []
    if body is not None:
        choice = body["choices"][0]
        text = choice["message"]["content"] if request.endpoint == "chat" else choice["text"]
        finish = choice.get("finish_reason")
        usage = body.get("usage")
        tokens = _logprobs(choice.get("logprobs"))
    else:
        parts = []
        for chunk in chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            if not chunk.get("choices"):
                continue
            choice = chunk["choices"][0]
            if request.endpoint == "chat":
                parts.append((choice.get("delta") or {}).get("content") or "")
            else:
                parts.append(choice.get("text") or "")
            finish = choice.get("finish_reason") or finish
            tokens.extend(_logprobs(choice.get("logprobs")))
        text = "".join(parts)
    return Completion(request, text or "", finish, usage, body, chunks, tokens, latency)


def _assemble_generate(
    request: RequestSpec, body: dict[str, Any] | None, chunks: list[dict[str, Any]], latency: float
) -> Completion:
    """SGLang native /generate: `text` is cumulative in stream chunks; `meta_info` on each."""
    final = body if body is not None else (chunks[-1] if chunks else {})
    meta = final.get("meta_info") or {}
    usage = {k: meta[k] for k in ("prompt_tokens", "completion_tokens") if k in meta} or None
    finish = meta.get("finish_reason")
    if isinstance(finish, dict):
        finish = finish.get("type")
    return Completion(request, final.get("text", ""), finish, usage, body, chunks, [], latency)


def _logprobs(block: Any) -> list[TokenLogprob]:
    """Chat style {content: [{token, logprob, top_logprobs: [{token, logprob}]}]} or the legacy
    completion style {tokens, token_logprobs, top_logprobs: [{token: logprob}]}."""
    if not block:
        return []
    if "content" in block:
        out = []
        for item in block["content"] or []:
            top = [(t["token"], t["logprob"]) for t in item.get("top_logprobs") or []]
            out.append(TokenLogprob(item["token"], item.get("logprob"), top))
        return out
    tokens = block.get("tokens") or []
    lps = block.get("token_logprobs") or [None] * len(tokens)
    tops = block.get("top_logprobs") or [None] * len(tokens)
    return [
        TokenLogprob(tok, lp, sorted((top or {}).items(), key=lambda kv: -kv[1]))
        for tok, lp, top in zip(tokens, lps, tops, strict=False)
    ]
