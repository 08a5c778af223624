"""OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

`speculate_metrics` placement follows SPEC §2: `choices[i].speculate_metrics` when not
streaming; when streaming, on the last chunk that carries content (the one with
`finish_reason`), null before it, then an optional usage-only chunk.

Hostile input is answered, never absorbed (issue 10):
- every 4xx (parse errors included) is one OpenAI error object naming what was wrong;
- the body is read up to `max_request_bytes` (413 beyond); parsing, validation, the chat
  template and tokenization run in a worker thread, so /health and the streams keep moving;
- checks that need no tokens (model, sampling parameters, sizes) run before tokenizing, and a
  prompt whose bytes cannot fit the context is refused without tokenizing it;
- a client that disconnects cancels its request at the next engine step, streaming or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from refserver.config import DEFAULT_MAX_REQUEST_BYTES
from refserver.engine import MAX_TOP_LOGPROBS, MODEL_NAME, Engine, StepOutput, TokenLogprob
from refserver.engine import Request as EngineRequest
from refserver.sampling import SamplingParams

log = logging.getLogger(__name__)

# What torch.Generator.manual_seed accepts (negative seeds wrap modulo 2**64).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
# FastDeploy serves its one model under this name too (its e2e tests send it).
DEFAULT_MODEL_ALIAS = "default"


class APIError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def _error_body(message: str, param: str | None, status: int) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "internal_server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


# ------------------------------------------------------------------------------ request schemas


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow")  # ignore unsupported OpenAI fields, like vLLM

    model: str
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage (so far) on every chunk, as vLLM and FastDeploy


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Base):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(_Base):
    prompt: str | list[str] | list[int]
    logprobs: int | None = None
    echo: bool = False


class ErrorDetail(BaseModel):
    message: str
    type: Literal["invalid_request_error", "internal_server_error"]
    param: str | None
    code: int


class ErrorResponse(BaseModel):
    """The one error shape (OpenAI's) of every 4xx and 5xx this server returns."""

    error: ErrorDetail


_Base.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()

_Body = TypeVar("_Body", bound=_Base)


# ------------------------------------------------------------------------------ parsing


def parse_body(raw: bytes, model: type[_Body]) -> _Body:
    """The request model from raw bytes, or an APIError that says exactly what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(
            f"the body is not valid UTF-8: byte {e.start} is {raw[e.start : e.start + 1]!r}",
            "body",
        ) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise APIError(
            f"the body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})", "body"
        ) from None
    except RecursionError:
        raise APIError("the body is not valid JSON here: it is nested too deeply", "body") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise APIError(f"the body is not valid JSON here: {e}", "body") from None
    if not isinstance(obj, dict):
        raise APIError(f"the body must be a JSON object, got a {_json_type(obj)}", "body")
    _check_unicode(obj)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise _validation_error(e) from None


def _reject_constant(name: str) -> Any:
    raise APIError(f"the body is not valid JSON: {name} is not a JSON number", "body")


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _check_unicode(obj: Any) -> None:
    """Refuse strings with lone surrogates ("a\\ud800b" is valid JSON but not Unicode text)."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                _check_str(path or "body", k)
                stack.append((f"{path}.{k}" if path else k, v))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str):
            _check_str(path, value)


def _check_str(path: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(
            f"{path}: the string has a lone surrogate U+{ord(value[e.start]):04X} at index "
            f"{e.start}; JSON strings must be Unicode text",
            path,
        ) from None


def _validation_error(exc: ValidationError) -> APIError:
    problems, param = [], None
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        param = param or loc or None
        value = err.get("input")
        shown = json.dumps(value)[:80] if _jsonable(value) else repr(value)[:80]
        problems.append(f"{loc or 'body'}: {err.get('msg')} (got {shown})")
        if len(problems) == 5:
            break
    return APIError("; ".join(problems), param)


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


# ------------------------------------------------------------------------------ the app


@dataclass(frozen=True)
class _Prepared:
    prompt_ids: list[int]
    params: SamplingParams


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request; the message names the field"},
    413: {"model": ErrorResponse, "description": "Body larger than --max-request-bytes"},
    500: {"model": ErrorResponse, "description": "The request failed inside the engine"},
}
_GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A completion (JSON), or with stream=true a stream of chunks (SSE)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **_ERRORS,
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def create_app(
    engine: Engine,
    model_name: str = MODEL_NAME,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    tokenizer = engine.tokenizer
    max_model_len = engine.config.max_model_len
    # A token is at most this many bytes of text, so a longer prompt cannot fit the context.
    max_prompt_bytes = (max_model_len - 1) * tokenizer.max_token_bytes
    served_names = {model_name, DEFAULT_MODEL_ALIAS}
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        state["ready"] = True
        log.info("refserver ready: model %s", model_name)
        yield
        # uvicorn has already drained open connections (SIGTERM = graceful shutdown).
        state["ready"] = False
        engine.stop()
        log.info("refserver stopped")

    app = FastAPI(title="refserver", lifespan=lifespan)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request models, which the handlers parse themselves."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, defs = models_json_schema(
                [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.param, exc.status), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(http: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{exc.detail}: {http.method} {http.url.path}"
        return JSONResponse(
            _error_body(message, None, exc.status_code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse(_error_body(message, None, 500), status_code=500)

    @app.get("/health", responses={503: {"description": "Starting or stopping"}})
    async def health() -> JSONResponse:
        code = 200 if state["ready"] else 503
        return JSONResponse({"status": "ok" if code == 200 else "unavailable"}, status_code=code)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "refserver",
                    "max_model_len": max_model_len,
                }
            ],
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.counters.render(), media_type="text/plain; version=0.0.4")

    async def read_body(http: Request) -> bytes:
        """The raw body, refused with 413 as soon as it is known to exceed the limit."""
        too_big = APIError(
            f"the request body exceeds {max_request_bytes} bytes (--max-request-bytes)",
            "body",
            413,
        )
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_request_bytes:
            raise too_big
        parts, size = [], 0
        async for part in http.stream():
            size += len(part)
            if size > max_request_bytes:
                raise too_big
            parts.append(part)
        return b"".join(parts)

    def check_params(body: _Base) -> None:
        """Everything that needs no tokens, checked before tokenizing."""
        if body.model not in served_names:
            raise APIError(
                f"model {body.model!r} does not exist; this server serves {model_name!r} "
                f"(also as {DEFAULT_MODEL_ALIAS!r})",
                "model",
            )
        if body.n != 1:
            raise APIError(f"n={body.n}: only n=1 is supported", "n")
        t = body.temperature
        if t is not None and not (math.isfinite(t) and 0.0 <= t <= 2.0):
            raise APIError(f"temperature={t}: must be in [0, 2]", "temperature")
        p = body.top_p
        if p is not None and not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise APIError(f"top_p={p}: must be in [0, 1]", "top_p")
        if p is not None and p > 0.0 and _float32(p) == 0.0:
            raise APIError(
                f"top_p={p}: rounds to 0 in float32, the sampler's precision; use 0 (greedy) "
                "or at least 1.4e-45",
                "top_p",
            )
        if body.seed is not None and not SEED_MIN <= body.seed <= SEED_MAX:
            raise APIError(f"seed={body.seed}: must be in [-2**63, 2**64 - 1]", "seed")
        max_tokens = requested_max_tokens(body)
        if max_tokens is not None and not 1 <= max_tokens <= max_model_len - 1:
            raise APIError(
                f"max_tokens={max_tokens}: must be in 1..{max_model_len - 1} "
                f"(max_model_len is {max_model_len})",
                "max_tokens",
            )
        top = max_tokens if max_tokens is not None else max_model_len - 1
        if not 0 <= body.min_tokens <= top:
            raise APIError(f"min_tokens={body.min_tokens}: must be in 0..{top}", "min_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(f"stop={body.stop!r}: stop strings must be non-empty", "stop")
        if len(stop) > 4:
            raise APIError(f"stop has {len(stop)} strings; at most 4 are allowed", "stop")

    def requested_max_tokens(body: _Base) -> int | None:
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            return body.max_completion_tokens
        return body.max_tokens

    def encode_prompt(text: str, param: str) -> list[int]:
        size = len(text.encode("utf-8"))
        if size > max_prompt_bytes:
            raise APIError(
                f"the prompt is {size} bytes: more than max_model_len - 1 = {max_model_len - 1} "
                f"tokens of at most {tokenizer.max_token_bytes} bytes each can hold",
                param,
            )
        return tokenizer.encode(text)

    def sampling_params(body: _Base, prompt_len: int, default_max: int | None) -> SamplingParams:
        """The engine's parameters once the prompt length is known."""
        param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
        if prompt_len == 0:
            raise APIError("the prompt is empty", param)
        if prompt_len >= max_model_len:
            raise APIError(
                f"the prompt is {prompt_len} tokens, longer than the context: max_model_len is "
                f"{max_model_len} and at least one token must be generated",
                param,
            )
        room = max_model_len - prompt_len
        max_tokens = requested_max_tokens(body)
        if max_tokens is None:
            max_tokens = room if default_max is None else min(default_max, room)
        if max_tokens > room:
            raise APIError(
                f"max_tokens={max_tokens} plus the prompt's {prompt_len} tokens exceeds "
                f"max_model_len={max_model_len}",
                "max_tokens",
            )
        if body.min_tokens > max_tokens:
            raise APIError(
                f"min_tokens={body.min_tokens}: must be in 0..max_tokens ({max_tokens})",
                "min_tokens",
            )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=tuple(stop),
        )

    def prepare_chat(raw: bytes) -> tuple[ChatCompletionRequest, _Prepared]:
        """Runs in a worker thread: parse, check, template, tokenize."""
        body = parse_body(raw, ChatCompletionRequest)
        check_params(body)
        if not body.messages:
            raise APIError("messages is empty; at least one message is required", "messages")
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_TOP_LOGPROBS:
            raise APIError(
                f"top_logprobs={body.top_logprobs}: must be in 0..{MAX_TOP_LOGPROBS}",
                "top_logprobs",
            )
        if body.top_logprobs and not body.logprobs:
            raise APIError("top_logprobs requires logprobs=true", "top_logprobs")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt_ids = encode_prompt(tokenizer.apply_chat_template(messages), "messages")
        params = sampling_params(body, len(prompt_ids), None)
        params = replace(params, logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0)
        return body, _Prepared(prompt_ids, params)

    def prepare_completion(raw: bytes) -> tuple[CompletionRequest, _Prepared]:
        """Runs in a worker thread: parse, check, tokenize."""
        body = parse_body(raw, CompletionRequest)
        check_params(body)
        if body.echo:
            raise APIError("echo=true is not supported", "echo")
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_TOP_LOGPROBS:
            raise APIError(
                f"logprobs={body.logprobs}: must be in 0..{MAX_TOP_LOGPROBS}", "logprobs"
            )
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(f"prompt has {len(prompt)} strings; only one is supported", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_ids = encode_prompt(prompt, "prompt")
        else:
            prompt_ids = list(prompt)
            bad = [t for t in prompt_ids if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise APIError(
                    f"prompt token ids out of range 0..{tokenizer.vocab_size - 1}: {bad[:5]}",
                    "prompt",
                )
        params = sampling_params(body, len(prompt_ids), 16)
        params = replace(
            params, logprobs=body.logprobs is not None, top_logprobs=body.logprobs or 0
        )
        return body, _Prepared(prompt_ids, params)

    async def run(http: Request, prepared: _Prepared) -> AsyncIterator[StepOutput]:
        """Submit to the engine and yield its outputs. The request is cancelled (its slot freed
        at the next engine step) as soon as the client disconnects or we stop early; an engine
        failure of this request raises APIError(500)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput | None] = asyncio.Queue()
        req = EngineRequest(
            prepared.prompt_ids,
            prepared.params,
            sink=lambda out: loop.call_soon_threadsafe(queue.put_nowait, out),
        )

        async def watch_disconnect() -> None:
            while (await http.receive())["type"] != "http.disconnect":
                pass
            queue.put_nowait(None)

        watcher = asyncio.create_task(watch_disconnect())
        engine.submit(req)
        finished = False
        try:
            while not finished:
                out = await queue.get()
                if out is None:
                    log.info("%s: client disconnected", req.request_id)
                    return
                if out.finish_reason == "error":
                    finished = True
                    raise APIError(f"the request failed inside the engine: {out.error}", None, 500)
                finished = out.finish_reason is not None
                yield out
        finally:
            watcher.cancel()
            if not finished:
                req.cancelled = True

    async def collect(http: Request, prepared: _Prepared) -> list[StepOutput]:
        outs = [out async for out in run(http, prepared)]
        if not outs or outs[-1].finish_reason is None:
            raise APIError("the client disconnected before the request finished", status=499)
        return outs

    def usage_of(prepared: _Prepared, out: StepOutput | None) -> dict[str, int]:
        prompt = len(prepared.prompt_ids)
        completion = out.completion_tokens if out is not None else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def stream_response(
        body: _Base,
        prepared: _Prepared,
        chunks: AsyncIterator[tuple[dict[str, Any], StepOutput | None]],
        template: dict[str, Any],
    ) -> StreamingResponse:
        """SSE of `template`-based chunks, with usage as `stream_options` asks and an engine
        failure sent as a final `{"error": ...}` event (the status line is already 200)."""
        options = body.stream_options or StreamOptions()

        async def events() -> AsyncIterator[str]:
            last = None
            try:
                async for choice, out in chunks:
                    last = out or last
                    chunk = {**template, "choices": [choice]}
                    if options.continuous_usage_stats:
                        chunk["usage"] = usage_of(prepared, last)
                    yield _sse(chunk)
            except APIError as exc:
                yield _sse(_error_body(exc.message, exc.param, exc.status))
                yield "data: [DONE]\n\n"
                return
            if options.include_usage and last is not None:
                yield _sse({**template, "choices": [], "usage": usage_of(prepared, last)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---------------------------------------------------------------- /v1/chat/completions

    @app.post(
        "/v1/chat/completions",
        responses=_GENERATE_RESPONSES,
        openapi_extra=_body_doc(ChatCompletionRequest),
    )
    async def chat(http: Request) -> Any:
        raw = await read_body(http)
        body, prepared = await asyncio.to_thread(prepare_chat, raw)
        top_n = prepared.params.top_logprobs
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": model_name}

        def lp_content(lps: list[TokenLogprob] | None) -> list[dict[str, Any]] | None:
            if lps is None:
                return None
            return [
                {
                    **_token_entry(tokenizer, lp.token_id, lp.logprob),
                    "top_logprobs": [_token_entry(tokenizer, t, v) for t, v in lp.top[:top_n]],
                }
                for lp in lps
            ]

        if body.stream:

            async def choices() -> AsyncIterator[tuple[dict[str, Any], StepOutput | None]]:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                yield {**first, "logprobs": None, "finish_reason": None}, None
                async for out in run(http, prepared):
                    yield (
                        {
                            "index": 0,
                            "delta": {"content": out.text},
                            "logprobs": {"content": lp_content(out.logprobs)}
                            if body.logprobs
                            else None,
                            "finish_reason": out.finish_reason,
                            "speculate_metrics": out.metrics,
                        },
                        out,
                    )

            template = {**head, "object": "chat.completion.chunk"}
            return stream_response(body, prepared, choices(), template)

        outs = await collect(http, prepared)
        last = outs[-1]
        content = [e for o in outs for e in (lp_content(o.logprobs) or [])]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(o.text for o in outs)},
            "logprobs": {"content": content} if body.logprobs else None,
            "finish_reason": last.finish_reason,
            "speculate_metrics": last.metrics,
        }
        usage = usage_of(prepared, last)
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}

    # ---------------------------------------------------------------- /v1/completions

    @app.post(
        "/v1/completions",
        responses=_GENERATE_RESPONSES,
        openapi_extra=_body_doc(CompletionRequest),
    )
    async def completions(http: Request) -> Any:
        raw = await read_body(http)
        body, prepared = await asyncio.to_thread(prepare_completion, raw)
        top_n = prepared.params.top_logprobs
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": model_name}

        def lp_block(lps: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
            if lps is None:
                return None
            tokens = [tokenizer.token_str(lp.token_id) for lp in lps]
            offsets, pos = [], offset
            for t in tokens:
                offsets.append(pos)
                pos += len(t)
            return {
                "tokens": tokens,
                "token_logprobs": [lp.logprob for lp in lps],
                "top_logprobs": [
                    {tokenizer.token_str(t): v for t, v in lp.top[:top_n]} for lp in lps
                ],
                "text_offset": offsets,
            }

        if body.stream:

            async def choices() -> AsyncIterator[tuple[dict[str, Any], StepOutput | None]]:
                offset = 0
                async for out in run(http, prepared):
                    yield (
                        {
                            "index": 0,
                            "text": out.text,
                            "logprobs": lp_block(out.logprobs, offset),
                            "finish_reason": out.finish_reason,
                            "speculate_metrics": out.metrics,
                        },
                        out,
                    )
                    offset += len(out.text)

            template = {**head, "object": "text_completion"}
            return stream_response(body, prepared, choices(), template)

        outs = await collect(http, prepared)
        last = outs[-1]
        logprobs = None
        if body.logprobs is not None:
            all_lps = [lp for o in outs for lp in (o.logprobs or [])]
            logprobs = lp_block(all_lps, 0)
        choice = {
            "index": 0,
            "text": "".join(o.text for o in outs),
            "logprobs": logprobs,
            "finish_reason": last.finish_reason,
            "speculate_metrics": last.metrics,
        }
        usage = usage_of(prepared, last)
        return {**head, "object": "text_completion", "choices": [choice], "usage": usage}

    return app


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    raw = tokenizer.token_bytes(token_id)
    return {
        "token": raw.decode("utf-8", errors="replace"),
        "logprob": logprob,
        "bytes": list(raw),
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
