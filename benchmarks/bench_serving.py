"""Serving benchmark of refserver on this machine: speculation configs x concurrency, one run.

    python -m benchmarks.bench_serving [--quick] [--dtype float32] [--out bench_serving.md]
    pytest -m benchmark benchmarks/bench_serving.py -s        # the --quick variant

For every configuration a real server process is launched (`python -m refserver`) and fed
the held-out prompts (refserver/assets/prompts/heldout.jsonl: "repetitive" = rewrite,
summarise, edit code; "open" = open-ended) over HTTP with streaming, greedy, a fixed
max_tokens:

- concurrency 1: the prompts one after another; tok/s per prompt kind;
- concurrency 8: all prompts at once (continuous batching over 8 slots).

Reported: output tokens/s (completion tokens / wall time), speedup over `none` at the same
concurrency and kind, and acceptance from the per-request speculate_metrics (SPEC §2):
mean accept length (tokens per target step) and accept ratio (1 - steps / tokens).

Peer column: Hugging Face transformers `generate(prompt_lookup_num_tokens=K)` on the same GGUF,
the same prompts and max_new_tokens, concurrency 1, in this process, with the same dtype and
thread count (plus plain `generate` as its own baseline).

Nothing here asserts on time: the numbers are printed and written as markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.refserver.helpers import MODEL, heldout_prompts, launch_server  # noqa: E402

log = logging.getLogger("bench_serving")

CONFIGS: dict[str, str | None] = {
    "none": None,
    "ngram K=5": '{"method":"ngram","num_speculative_tokens":5,"max_ngram_size":3,"min_ngram_size":1}',
    "mtp s=1": '{"method":"mtp","num_speculative_tokens":1,"num_model_steps":1}',
    "mtp s=3": '{"method":"mtp","num_speculative_tokens":3,"num_model_steps":3}',
    "hybrid K=5 s=3": (
        '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":3,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    ),
    "hybrid K=3 s=1": (
        '{"method":"mtp","num_speculative_tokens":3,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    ),
}


@dataclass
class Measure:
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    accepted: int = 0

    def add(self, other: Measure) -> None:
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.steps += other.steps
        self.accepted += other.accepted

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def accept_len(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def accept_ratio(self) -> float:
        return 1 - self.steps / self.accepted if self.accepted else 0.0


@dataclass
class Row:
    config: str
    concurrency: int
    kind: str  # repetitive | open | all
    m: Measure
    peer: dict[str, float] = field(default_factory=dict)


def chat_stream(url: str, messages: list[dict], max_tokens: int) -> Measure:
    """One streaming greedy chat request; its tokens and speculate_metrics."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    metrics, usage = None, None
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for c in chunk["choices"]:
                metrics = c.get("speculate_metrics") or metrics
    elapsed = time.perf_counter() - start
    return Measure(
        usage, elapsed, metrics["accepted_tokens_per_head"][0], metrics["accepted_tokens"]
    )


def bench_config(
    name: str, spec: str | None, prompts: Sequence[dict], max_tokens: int, dtype: str, threads: int
) -> list[Row]:
    extra = ["--dtype", dtype, "--threads", str(threads), "--max-model-len", "2048"]
    if spec:
        extra += ["--speculative-config", spec]
    with tempfile.TemporaryDirectory() as tmp:
        server = launch_server(Path(tmp), *extra)
        try:
            # `launch_server` pins float32 and 1 thread first; the later flags here override.
            chat_stream(server.url, prompts[0]["messages"], 4)  # warm-up
            rows = []
            by_kind: dict[str, Measure] = {}
            for p in prompts:  # concurrency 1
                m = chat_stream(server.url, p["messages"], max_tokens)
                by_kind.setdefault(p["kind"], Measure()).add(m)
            total = Measure()
            for kind, m in sorted(by_kind.items(), key=lambda kv: kv[0] != "repetitive"):
                rows.append(Row(name, 1, kind, m))
                total.add(m)
            rows.append(Row(name, 1, "all", total))
            start = time.perf_counter()  # concurrency 8: every prompt at once
            with ThreadPoolExecutor(8) as pool:
                results = list(
                    pool.map(lambda p: chat_stream(server.url, p["messages"], max_tokens), prompts)
                )
            wall = time.perf_counter() - start
            c8 = Measure()
            for m in results:
                c8.add(m)
            c8.seconds = wall
            rows.append(Row(name, 8, "all", c8))
        finally:
            server.terminate()
    for r in rows:
        log.info(
            "%-15s c=%d %-10s %7.2f tok/s  accept len %.2f",
            r.config, r.concurrency, r.kind, r.m.tok_s, r.m.accept_len,
        )  # fmt: skip
    return rows


def bench_hf_peer(
    prompts: Sequence[dict], max_tokens: int, dtype: str, threads: int, K: int = 5
) -> dict[str, dict[str, float]]:
    """tok/s of HF generate, plain and with prompt lookup, per prompt kind, concurrency 1."""
    import torch
    import transformers

    from refserver.model import default_gguf_path, load_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    path = default_gguf_path()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch_dtype
    ).eval()
    _, tok = load_model()  # same tokenizer and template as the server
    out: dict[str, dict[str, float]] = {}
    for label, kwargs in (
        ("hf generate", {}),
        (f"hf prompt-lookup K={K}", {"prompt_lookup_num_tokens": K, "max_matching_ngram_size": 3}),
    ):
        per_kind: dict[str, Measure] = {}
        for p in prompts:
            ids = torch.tensor([tok.encode(tok.apply_chat_template(p["messages"]))])
            start = time.perf_counter()
            with torch.inference_mode():
                gen = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    eos_token_id=sorted(tok.stop_ids),
                    pad_token_id=tok.eos_id,
                    **kwargs,
                )
            elapsed = time.perf_counter() - start
            m = per_kind.setdefault(p["kind"], Measure())
            m.add(Measure(gen.shape[1] - ids.shape[1], elapsed))
        total = Measure()
        for m in per_kind.values():
            total.add(m)
        out[label] = {k: m.tok_s for k, m in per_kind.items()} | {"all": total.tok_s}
        log.info("%s: %s", label, out[label])
    return out


def select_prompts(quick: bool) -> list[dict]:
    prompts = heldout_prompts()
    rep = [p for p in prompts if p["kind"] == "repetitive"]
    opn = [p for p in prompts if p["kind"] == "open"]
    n = 2 if quick else 4
    return rep[:n] + opn[:n]


def render(rows: list[Row], peer: dict[str, dict[str, float]], meta: dict[str, str]) -> str:
    base = {(r.concurrency, r.kind): r.m.tok_s for r in rows if r.config == "none"}
    lines = [
        "| config | concurrency | prompts | output tok/s | speedup vs none | mean accept length "
        "| accept ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = (
            r.m.tok_s / base[(r.concurrency, r.kind)] if base.get((r.concurrency, r.kind)) else 0
        )
        acc = "—" if r.config == "none" else f"{r.m.accept_len:.2f}"
        ratio = "—" if r.config == "none" else f"{r.m.accept_ratio:.3f}"
        lines.append(
            f"| {r.config} | {r.concurrency} | {r.kind} | {r.m.tok_s:.2f} | {speedup:.2f}x "
            f"| {acc} | {ratio} |"
        )
    for label, kinds in peer.items():
        for kind, tok_s in kinds.items():
            speedup = tok_s / base[(1, kind)] if base.get((1, kind)) else 0
            lines.append(f"| {label} (peer) | 1 | {kind} | {tok_s:.2f} | {speedup:.2f}x | — | — |")
    head = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    return f"{head}\n\n" + "\n".join(lines) + "\n"


def run(
    quick: bool, dtype: str, threads: int, max_tokens: int, configs: Sequence[str], peer: bool
) -> str:
    prompts = select_prompts(quick)
    rows: list[Row] = []
    for name in configs:
        rows += bench_config(name, CONFIGS[name], prompts, max_tokens, dtype, threads)
    peer_rows = bench_hf_peer(prompts, max_tokens, dtype, threads) if peer else {}
    import torch

    meta = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "torch": torch.__version__,
        "dtype / threads": f"{dtype} / {threads}",
        "prompts": f"{len(prompts)} held-out chat prompts "
        f"({sum(p['kind'] == 'repetitive' for p in prompts)} repetitive), greedy, "
        f"max_tokens {max_tokens}, streaming over HTTP",
        "MTP head": "refserver/assets/mtp_head.safetensors"
        if (REPO / "refserver/assets/mtp_head.safetensors").is_file()
        else "UNTRAINED (no weights file)",
    }
    table = render(rows, peer_rows, meta)
    print(table)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="4 prompts, 32 tokens, fewer configs")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    max_tokens = args.max_tokens or (32 if args.quick else 128)
    table = run(args.quick, args.dtype, args.threads, max_tokens, args.configs, not args.no_peer)
    if args.out:
        Path(args.out).write_text(table)
    return 0


@pytest.mark.benchmark
def test_serving_benchmark_quick():
    pytest.importorskip("transformers")
    table = run(True, "float32", 1, 32, ["none", "ngram K=5", "hybrid K=5 s=3"], peer=True)
    assert "| none | 1 |" in table  # the run completed and produced rows; timings are not judged


if __name__ == "__main__":
    sys.exit(main())
