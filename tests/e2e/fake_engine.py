"""A tiny HTTP engine stand-in that answers in the documented formats of FastDeploy (SPEC §2),
vLLM (/metrics counters) and SGLang (/generate meta_info), with values fixed by a JSON config.

Why a fake: the harness's failure paths (a server that reports a broken invariant, diverges at a
near-tie, answers slowly, or is never healthy) need a server that misbehaves on demand; refserver
is the real engine and is tested by the default scenarios. The metrics are computed from a list
of per-step accept counts with SPEC §2's formulas, so they are consistent unless told otherwise.

Usage: python tests/e2e/fake_engine.py --port PORT --config CONFIG.json
Config keys: accept_nums (list[int]), k (int), corrupt (field -> value to overwrite),
diverge_at (int|null), tie_at (int, default diverge_at: where the
top-2 logprob gap is `gap`), gap (float), delay_s (float), healthy_after_s (float), vllm_k (int), start_log (path),
gather_n (int: hold every answer until that many requests were in flight at once, max 10 s),
exit_after (int: the process dies, as if killed, when request number exit_after + 1 arrives).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from refserver.metrics import RequestMetrics

CONFIG: dict[str, Any] = {}
STARTED = time.monotonic()
COUNTERS = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "per_pos": [0, 0, 0]}
IN_FLIGHT = {"now": 0, "max": 0}
ANSWERED = {"n": 0}
LOCK = threading.Lock()


def speculate_metrics(accept_nums: list[int], k: int) -> dict[str, Any]:
    """SPEC §2 from the configured accept_nums: the same formulas refserver reports with."""
    return RequestMetrics(K=k, accept_nums=list(accept_nums)).to_dict()


def tokens() -> list[str]:
    n = sum(CONFIG.get("accept_nums", [1, 1, 1]))
    out = [f" w{i}" for i in range(n)]
    at = CONFIG.get("diverge_at")
    if at is not None:
        out[at:] = [f" alt{i}" for i in range(at, n)]
    return out


def logprob_items(toks: list[str]) -> list[dict[str, Any]]:
    items = []
    at, gap = CONFIG.get("tie_at", CONFIG.get("diverge_at")), CONFIG.get("gap", 0.5)
    for i, tok in enumerate(toks):
        other = f" w{i}" if tok.startswith(" alt") else f" alt{i}"
        second = -0.1 - (gap if i == at else 0.5)
        top = [{"token": tok, "logprob": -0.1}, {"token": other, "logprob": second}]
        items.append({"token": tok, "logprob": -0.1, "top_logprobs": top})
    return items


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            ready = time.monotonic() - STARTED >= CONFIG.get("healthy_after_s", 0)
            self._json({"ok": ready}, 200 if ready else 503)
        elif self.path == "/stats":
            self._json({"max_in_flight": IN_FLIGHT["max"]})
        elif self.path == "/metrics":
            with LOCK:
                c = dict(COUNTERS)
            lines = [
                "# TYPE vllm:spec_decode_num_drafts counter",
                f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="fake"}} {c["drafts"]}.0',
                f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="fake"}} '
                f"{c['draft_tokens']}.0",
                f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="fake"}} '
                f"{c['accepted']}.0",
            ]
            lines += [
                f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",'
                f'model_name="fake",position="{p}"}} {v}.0'
                for p, v in enumerate(c["per_pos"])
            ]
            data = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        with LOCK:
            IN_FLIGHT["now"] += 1
            IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
        try:
            self._post()
        finally:
            with LOCK:
                IN_FLIGHT["now"] -= 1

    def _post(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with LOCK:
            ANSWERED["n"] += 1
            if ANSWERED["n"] > CONFIG.get("exit_after", ANSWERED["n"]):
                os._exit(1)  # like a crash or SIGKILL: no response, no cleanup
        time.sleep(CONFIG.get("delay_s", 0))
        deadline = time.monotonic() + 10  # gather_n: hold answers until that many are in flight
        while IN_FLIGHT["max"] < CONFIG.get("gather_n", 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        toks = tokens()
        metrics = speculate_metrics(CONFIG.get("accept_nums", [1, 1, 1]), CONFIG.get("k", 5))
        metrics.update(CONFIG.get("corrupt", {}))
        usage = {"prompt_tokens": 7, "completion_tokens": len(toks), "total_tokens": 7 + len(toks)}
        self._count(len(toks))
        if self.path == "/generate":
            meta = {
                "completion_tokens": len(toks),
                "prompt_tokens": 7,
                "spec_verify_ct": len(CONFIG.get("accept_nums", [1, 1, 1])),
                "finish_reason": {"type": "length"},
            }
            self._json({"text": "".join(toks), "meta_info": meta})
            return
        want_lp = body.get("logprobs")
        items = logprob_items(toks)
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(toks)},
                "finish_reason": "length",
                "speculate_metrics": metrics,
            }
            if want_lp:
                choice["logprobs"] = {"content": items}
            self._json(
                {"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage}
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, tok in enumerate(toks):
            last = i == len(toks) - 1
            choice = {
                "index": 0,
                "delta": {"content": tok},
                "finish_reason": "length" if last else None,
                "speculate_metrics": metrics if last else None,
            }
            if want_lp:
                choice["logprobs"] = {"content": [items[i]]}
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        if (body.get("stream_options") or {}).get("include_usage"):
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def _count(self, n_tokens: int) -> None:
        k = CONFIG.get("vllm_k", 3)
        with LOCK:
            for a in CONFIG.get("accept_nums", [1, 1, 1])[1:]:
                COUNTERS["drafts"] += 1
                COUNTERS["draft_tokens"] += k
                COUNTERS["accepted"] += a - 1
                for p in range(min(a - 1, k)):
                    COUNTERS["per_pos"][p] += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    with open(args.config) as handle:
        CONFIG.update(json.load(handle))
    COUNTERS["per_pos"] = [0] * CONFIG.get("vllm_k", 3)
    if CONFIG.get("start_log"):  # lets tests count how often a server configuration was launched
        with open(CONFIG["start_log"], "a") as log:
            log.write(f"{args.port}\n")
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
