"""OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn).

`speculate_metrics` placement follows SPEC §2: `choices[i].speculate_metrics` when not
streaming; when streaming, on the last chunk that carries content (the one with
`finish_reason`), null before it, then an optional usage-only chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from refserver.engine import MAX_TOP_LOGPROBS, MODEL_NAME, Engine, StepOutput, TokenLogprob
from refserver.engine import Request as EngineRequest
from refserver.sampling import SamplingParams

log = logging.getLogger(__name__)


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


_Base.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()


# ------------------------------------------------------------------------------ the app


def create_app(engine: Engine, model_name: str = MODEL_NAME) -> FastAPI:
    tokenizer = engine.tokenizer
    max_model_len = engine.config.max_model_len
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

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.param, exc.status), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            param = param or loc or None
            value = err.get("input")
            shown = json.dumps(value)[:80] if _jsonable(value) else repr(value)[:80]
            problems.append(f"{loc or 'body'}: {err.get('msg')} (got {shown})")
        return JSONResponse(_error_body("; ".join(problems), param, 400), status_code=400)

    @app.get("/health")
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

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.counters.render(), media_type="text/plain; version=0.0.4")

    def check_common(body: _Base, prompt_len: int, default_max: int | None) -> SamplingParams:
        if body.model != model_name:
            raise APIError(
                f"model {body.model!r} does not exist; this server serves {model_name!r}", "model"
            )
        if body.n != 1:
            raise APIError(f"n={body.n}: only n=1 is supported", "n")
        if prompt_len == 0:
            raise APIError("the prompt is empty", "prompt")
        if prompt_len >= max_model_len:
            raise APIError(
                f"the prompt is {prompt_len} tokens, longer than the context: max_model_len is "
                f"{max_model_len} and at least one token must be generated",
                "messages" if isinstance(body, ChatCompletionRequest) else "prompt",
            )
        room = max_model_len - prompt_len
        max_tokens = body.max_tokens
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = room if default_max is None else min(default_max, room)
        if max_tokens <= 0:
            raise APIError(f"max_tokens={max_tokens}: must be >= 1", "max_tokens")
        if max_tokens > room:
            raise APIError(
                f"max_tokens={max_tokens} plus the prompt's {prompt_len} tokens exceeds "
                f"max_model_len={max_model_len}",
                "max_tokens",
            )
        if not 0 <= body.min_tokens <= max_tokens:
            raise APIError(
                f"min_tokens={body.min_tokens}: must be in 0..max_tokens ({max_tokens})",
                "min_tokens",
            )
        temperature = 1.0 if body.temperature is None else body.temperature
        if not 0.0 <= temperature <= 2.0:
            raise APIError(f"temperature={temperature}: must be in [0, 2]", "temperature")
        top_p = 1.0 if body.top_p is None else body.top_p
        if not 0.0 <= top_p <= 1.0:
            raise APIError(f"top_p={top_p}: must be in [0, 1]", "top_p")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(f"stop={body.stop!r}: stop strings must be non-empty", "stop")
        if len(stop) > 4:
            raise APIError(f"stop has {len(stop)} strings; at most 4 are allowed", "stop")
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=body.seed,
            stop=tuple(stop),
        )

    async def run(
        http: Request, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[StepOutput]:
        """Submit to the engine and yield its outputs; cancel the request if we stop early."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        req = EngineRequest(
            prompt_ids, params, sink=lambda out: loop.call_soon_threadsafe(queue.put_nowait, out)
        )
        engine.submit(req)
        finished = False
        try:
            while not finished:
                try:
                    out = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        log.info("%s: client disconnected", req.request_id)
                        return
                    continue
                finished = out.finish_reason is not None
                yield out
        finally:
            if not finished:
                req.cancelled = True

    # ---------------------------------------------------------------- /v1/chat/completions

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, http: Request) -> Any:
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
        prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
        params = check_common(body, len(prompt_ids), None)
        top_n = body.top_logprobs or 0
        params = _with_logprobs(params, body.logprobs, top_n)
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
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                chunk = {**head, "object": "chat.completion.chunk"}
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                yield _sse(
                    {**chunk, "choices": [{**first, "logprobs": None, "finish_reason": None}]}
                )
                last = None
                async for out in run(http, prompt_ids, params):
                    last = out
                    choice = {
                        "index": 0,
                        "delta": {"content": out.text},
                        "logprobs": {"content": lp_content(out.logprobs)}
                        if body.logprobs
                        else None,
                        "finish_reason": out.finish_reason,
                        "speculate_metrics": out.metrics,
                    }
                    yield _sse({**chunk, "choices": [choice]})
                if include_usage and last is not None:
                    yield _sse({**chunk, "choices": [], "usage": _usage(last)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        outs = [out async for out in run(http, prompt_ids, params)]
        if not outs:
            raise APIError("the client disconnected before the request finished", status=499)
        last = outs[-1]
        content = [e for o in outs for e in (lp_content(o.logprobs) or [])]
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(o.text for o in outs)},
            "logprobs": {"content": content} if body.logprobs else None,
            "finish_reason": last.finish_reason,
            "speculate_metrics": last.metrics,
        }
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(last)}

    # ---------------------------------------------------------------- /v1/completions

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request) -> Any:
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
            prompt_ids = tokenizer.encode(prompt)
        else:
            prompt_ids = list(prompt)
            bad = [t for t in prompt_ids if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise APIError(
                    f"prompt token ids out of range 0..{tokenizer.vocab_size - 1}: {bad[:5]}",
                    "prompt",
                )
        params = check_common(body, len(prompt_ids), 16)
        top_n = body.logprobs or 0
        params = _with_logprobs(params, body.logprobs is not None, top_n)
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
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                chunk = {**head, "object": "text_completion"}
                last, offset = None, 0
                async for out in run(http, prompt_ids, params):
                    last = out
                    choice = {
                        "index": 0,
                        "text": out.text,
                        "logprobs": lp_block(out.logprobs, offset),
                        "finish_reason": out.finish_reason,
                        "speculate_metrics": out.metrics,
                    }
                    offset += len(out.text)
                    yield _sse({**chunk, "choices": [choice]})
                if include_usage and last is not None:
                    yield _sse({**chunk, "choices": [], "usage": _usage(last)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        outs = [out async for out in run(http, prompt_ids, params)]
        if not outs:
            raise APIError("the client disconnected before the request finished", status=499)
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
        return {**head, "object": "text_completion", "choices": [choice], "usage": _usage(last)}

    return app


def _with_logprobs(params: SamplingParams, logprobs: bool, top_n: int) -> SamplingParams:
    from dataclasses import replace

    return replace(params, logprobs=logprobs, top_logprobs=top_n)


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    raw = tokenizer.token_bytes(token_id)
    return {
        "token": raw.decode("utf-8", errors="replace"),
        "logprob": logprob,
        "bytes": list(raw),
    }


def _usage(out: StepOutput) -> dict[str, int]:
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
    }


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
