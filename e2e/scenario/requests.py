"""The `requests` of a scenario: request_defaults and matrix overlays merged into the exact JSON
bodies sent, every key checked against its endpoint (e2e.request_fields), prompts read from
`messages_from` JSONL files."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

from e2e import request_fields
from e2e.scenario.reader import Reader, did_you_mean, scenario_relative
from e2e.scenario.schema import DEFAULT_ENDPOINT, ENDPOINTS, RequestSpec, ScenarioError

# Request keys the harness interprets itself; the others make the JSON body (e2e.request_fields).
REQUEST_META_KEYS = {"id", "endpoint", "messages_from", "repeat"}


def read_requests(top: Reader, path: Path, adapter: str) -> list[RequestSpec]:
    defaults = top.child("request_defaults", top.get("request_defaults", dict, {}))
    matrix = _read_matrix(top)
    raw_requests = top.get("requests", list)
    if not raw_requests:
        raise top.error("requests", "a non-empty list of requests", raw_requests)
    requests: list[RequestSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_requests):
        reader = top.child(f"requests[{i}]", raw)
        # The harness's own keys (id, repeat, endpoint) may come from request_defaults too.
        merged = Reader(path, {**defaults.mapping(), **reader.mapping()}, reader.where)
        base_id = merged.get("id", str, expected="a unique request id")
        repeat = merged.positive_int("repeat", 1)
        endpoint = merged.get("endpoint", str, DEFAULT_ENDPOINT)
        if endpoint not in ENDPOINTS:
            raise merged.error("endpoint", f"one of {list(ENDPOINTS)}", endpoint)
        for layer in (defaults, reader):
            _check_fields(layer, endpoint, adapter)
        for overlay in itertools.chain(*matrix):
            _check_fields(overlay, endpoint, adapter, overlay=True)
        base = _merge_layer(copy.deepcopy(defaults.mapping()), copy.deepcopy(reader.mapping()))
        if "messages_from" in base:
            if "messages" in base:
                raise merged.error(
                    "messages_from",
                    "either 'messages' or 'messages_from', not both",
                    show_got=False,
                )
            base["messages"] = _messages_from(merged, path, base["messages_from"])
        for overlays in itertools.product(*matrix):
            body = {k: copy.deepcopy(v) for k, v in base.items() if k not in REQUEST_META_KEYS}
            suffix: list[str] = []
            for overlay in overlays:
                label = overlay.mapping().get("name")
                layer = {k: copy.deepcopy(v) for k, v in overlay.mapping().items() if k != "name"}
                body = _merge_layer(body, layer)
                if label:
                    suffix.append(str(label))
            body = _flatten_extra_body(merged, body)
            _check_body(merged, endpoint, body)
            request_id = base_id + ("/" + "+".join(suffix) if suffix else "")
            for r in range(repeat):
                full_id = request_id + (f"#{r + 1}" if repeat > 1 else "")
                if full_id in seen:
                    raise merged.error("id", "a unique request id", full_id)
                seen.add(full_id)
                requests.append(RequestSpec(id=full_id, endpoint=endpoint, body=body))
    return requests


def _check_fields(layer: Reader, endpoint: str, adapter: str, overlay: bool = False) -> None:
    """Every body key of one layer (request_defaults, a request, a matrix overlay) is a field of
    the endpoint (e2e.request_fields) or sits under `extra_body:`, a mapping."""
    allowed = request_fields.allowed_fields(endpoint, adapter)
    harness_keys = {"name"} if overlay else REQUEST_META_KEYS
    for key, value in layer.mapping().items():
        if key in harness_keys:
            continue
        if key == request_fields.EXTRA_BODY:
            extra = layer.child(key, value).mapping()
            for name in extra:
                if not isinstance(name, str):
                    raise layer.child(key, value).error(str(name), "a string key", name)
            continue
        if key not in allowed:
            raise layer.error(
                str(key),
                f"{request_fields.describe(endpoint, adapter)}"
                f"{did_you_mean(str(key), allowed)}; send other fields of your engine "
                f"under '{request_fields.EXTRA_BODY}:'",
                show_got=False,
            )


def _merge_layer(body: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `body`: its keys replace those of `body`, except `extra_body`, merged by key."""
    extra = {**body.get(request_fields.EXTRA_BODY, {}), **layer.get(request_fields.EXTRA_BODY, {})}
    out = {**body, **layer}
    if extra:
        out[request_fields.EXTRA_BODY] = extra
    return out


def _flatten_extra_body(reader: Reader, body: dict[str, Any]) -> dict[str, Any]:
    """The body as sent: the `extra_body` keys join the top level (never replacing one)."""
    extra = body.pop(request_fields.EXTRA_BODY, {})
    for name in extra:
        if name in body:
            raise reader.child(request_fields.EXTRA_BODY, extra).error(
                name, "a key that is not also set at the top level of the request", extra[name]
            )
    return {**body, **extra}


def _read_matrix(top: Reader) -> list[list[Reader]]:
    """`matrix`: a list of axes, each a list of overlays (mappings merged into every request body).

    Every request is expanded over the cartesian product of the axes. An overlay's optional
    'name' is appended to the request id, e.g. 'lighthouse/stream+logprobs'.
    """
    axes = top.get("matrix", list, [])
    out: list[list[Reader]] = []
    for a, axis in enumerate(axes):
        if not isinstance(axis, list) or not axis:
            raise top.error(f"matrix[{a}]", "a non-empty list of overlays (mappings)", axis)
        overlays = []
        for o, overlay in enumerate(axis):
            if not isinstance(overlay, dict):
                raise top.error(f"matrix[{a}][{o}]", "a mapping of request keys", overlay)
            bad = set(overlay) & (REQUEST_META_KEYS - {"name"})
            if bad:
                raise top.error(
                    f"matrix[{a}][{o}]",
                    "body keys only (not id/endpoint/messages_from/repeat)",
                    sorted(bad),
                )
            overlays.append(top.child(f"matrix[{a}][{o}]", overlay))
        out.append(overlays)
    return out


def _messages_from(reader: Reader, path: Path, ref: Any) -> list[dict[str, Any]]:
    """'FILE.jsonl#ID': the messages of the line with that id (FILE relative to the scenario).

    The whole prompt file is checked: one JSON object per line, each with a string 'id' and a
    'messages' list of {role, content} objects. Errors name the prompt file, the line and the key.
    """
    if not isinstance(ref, str) or "#" not in ref:
        raise reader.error(
            "messages_from", "'FILE.jsonl#ID' (FILE relative to the scenario file)", ref
        )
    file_part, prompt_id = ref.rsplit("#", 1)
    jsonl = scenario_relative(path, file_part)
    try:
        raw = jsonl.read_bytes()
    except OSError as exc:
        raise reader.error("messages_from", f"a readable JSONL file ({exc})", ref) from exc
    used_by = f"(the prompt file of {path} key '{reader.where}.messages_from')"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{jsonl}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
            f"expected JSON lines {used_by}"
        ) from None
    found = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{jsonl}: line {lineno}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = f" ({exc.msg} at column {exc.colno})" if hasattr(exc, "colno") else ""
            raise ScenarioError(
                f"{where}: not JSON{detail}; expected one JSON object per line {used_by}"
            ) from None
        if not isinstance(record, dict):
            raise ScenarioError(
                f"{where}: expected a JSON object with 'id' and 'messages', got "
                f"{_json_type(record)} {used_by}"
            )
        for key, ok, expected in (
            ("id", isinstance(record.get("id"), str), "a string"),
            ("messages", _is_message_list(record.get("messages")),
             "a non-empty list of {role, content} objects"),
        ):  # fmt: skip
            if not ok:
                got = f"got {record[key]!r}" if key in record else "the key is required"
                raise ScenarioError(f"{where}: key {key!r}: expected {expected}, {got} {used_by}")
        if record["id"] == prompt_id and found is None:
            found = record["messages"]
    if found is None:
        raise reader.error("messages_from", f"an id present in {jsonl}", prompt_id)
    return found


def _is_message_list(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and bool(messages)
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    )


def _json_type(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_body(reader: Reader, endpoint: str, body: dict[str, Any]) -> None:
    if endpoint == "chat":
        messages = body.get("messages")
        if not _is_message_list(messages):
            raise reader.error(
                "messages",
                "a non-empty list of {role, content} mappings (or messages_from)",
                messages,
            )
    elif endpoint == "completion":
        if not isinstance(body.get("prompt"), (str, list)):
            raise reader.error("prompt", "a string (completion endpoint)", body.get("prompt"))
    elif not isinstance(body.get("text"), str) and "input_ids" not in body:
        raise reader.error("text", "a string or input_ids (generate endpoint)", body.get("text"))
    for key in ("max_tokens", "top_logprobs"):
        if key in body and (
            not isinstance(body[key], int) or isinstance(body[key], bool) or body[key] < 0
        ):
            raise reader.error(key, "a non-negative integer", body[key])
    for key in ("stream", "logprobs"):
        if (
            key in body
            and not isinstance(body[key], bool)
            and not (key == "logprobs" and endpoint == "completion" and isinstance(body[key], int))
        ):
            raise reader.error(key, "true or false", body[key])
