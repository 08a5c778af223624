"""The engine: continuous batching with speculative decoding over a static KV cache.

One engine thread owns the model. Each `step()`:

1. frees the slots of cancelled requests (a client that went away);
2. verifies every running row's draft `[last token, d1..dk]` in ONE batched target forward at
   per-row positions, then per row: accepts (greedy = longest prefix equal to the argmax + the
   bonus token; sampling = speculative sampling with point-mass drafts, see `sampling.py`),
   rolls the KV cache back (free: the cache is indexed by position, rejected positions are
   overwritten by the next forward before anything reads them), and emits the tokens after
   cutting at EOS, stop strings and max_tokens, recording accept_num;
3. admits waiting requests into the free slots and prefills them one by one (the first token is
   emitted right away; it is a step with accept_num = 1 for SPEC §2);
4. drafts for the verified and the admitted rows at once: MTP for s tokens, then
   `hybrid_mtp_ngram` (op or oracle) on request state that lives on its device
   (`drafting.NgramExtender`); with `"adaptive": true` each row drafts only as much as
   measurably pays (`refserver/adaptive.py`).

Acceptance is token-level (which tokens, cut at EOS and max_tokens); the output of a step
(detokenization, stop strings, logprobs delivery, streaming, metrics) is `_PendingOutput`. Under
`--enable-overlap-schedule` the outputs of step t are delivered while the device computes the
verify forward of step t+1 (FastDeploy's overlap scheduler); a row that a stop string ends
then had one step computed in vain, which is discarded, so texts and metrics are unchanged.

Under `--graph-optimization-config '{"use_cudagraph": true}'` the verify forward (K+1 tokens per
row) and, with draft_model_use_cudagraph, the MTP draft steps plus the op (`pad_to_max=True`)
are CUDA graphs replayed per batch bucket (see `cuda_graphs.py`). A graph's batch is a prefix of
the slots, 0..bucket-1; slots in it without a row compute padding that nothing reads. The
prefill is a graph too, per captured prompt length (the prompt padded). Every prompt length and
every batch bucket of the first cache window is captured at start-up.

Requests come from other threads through `submit()`; results go back through each request's
`sink` callback, called on the engine thread.

One request can never hurt another: the API validates every parameter, and whatever still raises
inside a step fails only the request it belongs to (`finish_reason="error"` with the message).
A batched forward or draft that raises is retried row by row, so the rows that work go on.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from refserver.adaptive import AdaptivePolicy, Plan, RequestState
from refserver.config import DEFAULT_MTP_DRAFT_VOCAB, EngineConfig
from refserver.cuda_graphs import (
    GraphedPhase,
    bucket_for,
    capture_sizes,
    kv_buckets,
    prefill_lengths,
)
from refserver.drafting import DraftRow, NgramExtender, read_drafts, resolve_impl
from refserver.metrics import PrometheusCounters, RequestMetrics
from refserver.model import Transformer, host_ints_to, load_model
from refserver.mtp import DEFAULT_RANK_PATH, MTPDrafter, MTPInput, load_mtp_drafter
from refserver.sampling import SamplingParams, target_probs, verify_greedy, verify_sampling
from refserver.tokenizer import IncrementalDecoder, Tokenizer

log = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
MAX_TOP_LOGPROBS = 20  # OpenAI's maximum; the API cuts to what the request asked for


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token_id, logprob), best first


@dataclass
class StepOutput:
    """What one engine step produced for one request (a streaming delta)."""

    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" once finished
    metrics: dict[str, object] | None = None  # speculate_metrics, on the finishing output only
    prompt_tokens: int = 0
    completion_tokens: int = 0  # cumulative
    error: str | None = None  # with finish_reason "error": what failed, for the client


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[StepOutput], None]
    request_id: str = field(default_factory=lambda: f"req-{next(_request_counter)}")
    cancelled: bool = False  # set from any thread; the engine frees the slot at its next step
    arrival: float = field(default_factory=time.monotonic)


_request_counter = itertools.count()
_T = TypeVar("_T")


@dataclass
class _Sequence:
    req: Request
    slot: int
    metrics: RequestMetrics
    generator: torch.Generator
    detokenizer: IncrementalDecoder
    out_ids: list[int] = field(default_factory=list)  # accepted tokens (token-level cuts)
    kv_len: int = 0  # target KV positions [0, kv_len) are valid
    drafts: list[int] = field(default_factory=list)
    text: str = ""
    text_sent: int = 0
    num_output: int = 0  # tokens delivered in outputs (out_ids[:num_output])
    num_recorded: int = 0  # out_ids already written into the n-gram state
    done: bool = False  # accepted its last token (EOS / max_tokens): slot freed, no more steps
    finished: bool = False  # its last output is delivered (or a stop string ended it)
    failed: bool = False  # ended with an error response
    adaptive: RequestState | None = None  # with "adaptive": true, its acceptance statistics

    @property
    def last_token(self) -> int:
        return self.out_ids[-1]


@dataclass
class _PendingOutput:
    """One step's accepted tokens of one sequence, before detokenization and delivery."""

    seq: _Sequence
    tokens: list[int]
    logprobs: list[TokenLogprob] | None
    num_drafts: int
    finish: str | None  # token-level: "stop" (EOS) | "length" (max_tokens) | None


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        model: Transformer | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.config = config
        self.spec = config.speculative
        self.device = torch.device(config.device)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
        if model is None or tokenizer is None:
            model, tokenizer = load_model(config.gguf_path, dtype=dtype, device=self.device)
        self.model, self.tokenizer = model, tokenizer
        self.K = self.spec.K
        # Room for the longest sequence plus a full draft (and its padding) beyond it.
        self.cache = model.new_cache(config.max_num_seqs, config.max_model_len + self.K + 2)
        self.mtp: MTPDrafter | None = None
        if self.spec.mtp_steps > 0:
            self.mtp = load_mtp_drafter(
                config.mtp_head_path,
                model,
                config.max_num_seqs,
                self.cache.max_len,
                draft_vocab=_draft_vocab(config),
                rank_path=config.mtp_token_rank_path,
            )
        graphs = config.graph_optimization
        self.ngram: NgramExtender | None = None
        if self.spec.uses_ngram:
            impl, fn = resolve_impl(config.ngram_impl, self.device)
            self.ngram = NgramExtender(
                impl,
                fn,
                self.K,
                self.spec.max_ngram_size,
                self.spec.min_ngram_size,
                self.device,
                config.max_num_seqs,
                self.cache.max_len,
                pad_to_max=graphs.use_cudagraph,
            )
        self.overlap = config.enable_overlap_schedule
        self._pending: list[_PendingOutput] = []
        self._buckets = capture_sizes(config.max_num_seqs, graphs.cudagraph_capture_sizes)
        self._kv_buckets = kv_buckets(self.cache.max_len)  # cache windows a graph reads
        self._prefill_lengths = prefill_lengths(self._kv_buckets)
        self._verify_graph: GraphedPhase | None = None
        self._draft_graph: GraphedPhase | None = None
        self._prefill_graph: GraphedPhase | None = None
        if graphs.use_cudagraph:
            pool = torch.cuda.graph_pool_handle() if graphs.use_unique_memory_pool else None
            compile_ = graphs.graph_opt_level == 2
            self._verify_graph = GraphedPhase(
                "verify", self._verify_batch, self.device, pool, compile_
            )
            # Not compiled at graph_opt_level 2: a prefill is once per request, and its seven
            # lengths would add seven compiles to the start-up.
            self._prefill_graph = GraphedPhase("prefill", self._prefill_forward, self.device, pool)
            if graphs.draft_model_use_cudagraph and self.mtp is not None:
                self._draft_graph = GraphedPhase(
                    "draft", self._draft_batch, self.device, pool, compile_
                )
        self.adaptive = (
            AdaptivePolicy(self.K, self.spec.mtp_steps, self.spec.uses_ngram)
            if self.spec.adaptive
            else None
        )
        if self._verify_graph is not None:
            self._capture_graphs()
        self.counters = PrometheusCounters(MODEL_NAME, self.K)
        self._stop_ids = sorted(tokenizer.stop_ids)
        self._rng = random.Random(config.seed)
        self._slots: list[_Sequence | None] = [None] * config.max_num_seqs
        self._waiting: deque[Request] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._go: threading.Event | None = None  # set by on_own_thread: start() releases it
        self._running = False
        log.info(
            "engine: %s, max_num_seqs=%d, max_model_len=%d, %s %s, n-gram impl %s, "
            "overlap schedule %s, cuda graphs %s",
            self.spec.label,
            config.max_num_seqs,
            config.max_model_len,
            config.device,
            config.dtype,
            self.ngram.impl if self.ngram else "-",
            "on" if self.overlap else "off",
            _graphs_label(self._verify_graph, self._draft_graph, self._buckets),
        )

    @torch.inference_mode()
    def _capture_graphs(self) -> None:
        """At start-up: the prefill graph of every captured prompt length, and every batch
        bucket of the decode graphs for the first cache window (KV_BUCKET_MIN positions: it
        holds every request of a short prompt), with inputs of exactly the shapes and dtypes
        the steps pass, so that no timed step captures (or, at graph_opt_level 2, compiles).
        Larger decode windows are captured when a step first reads that far (logged)."""
        assert self._verify_graph is not None and self._prefill_graph is not None
        window, T, dev = self._kv_buckets[0], 1 + self.K, self.device
        started = time.perf_counter()
        for n in self._prefill_lengths:
            zeros = torch.zeros((1, n), dtype=torch.int64, device=dev)
            positions = torch.arange(n, device=dev)[None]
            self._prefill_graph.capture(
                zeros,
                positions,
                zeros[0, :1],
                zeros[0, :1],
                static_kv_len=bucket_for(self._kv_buckets, n),
            )
        for B in self._buckets:
            slots = torch.arange(B, device=dev)
            positions = torch.arange(T, device=dev).repeat(B, 1)
            tokens = torch.zeros_like(positions)
            self._verify_graph.capture(tokens, positions, slots, static_kv_len=window)
            if self._draft_graph is None or self.adaptive is not None:  # adaptive: drafts eagerly
                continue
            dtype = self.model.tok_embeddings.weight.dtype  # the hidden states' dtype
            hidden = torch.zeros(B, T, self.model.config.dim, dtype=dtype, device=dev)
            last = torch.zeros(B, dtype=torch.int64, device=dev)
            row_state: tuple[Tensor, ...] = ()
            if self.ngram is not None:  # rows that do not draft, as a graph's padding rows
                padding = [DraftRow(slot, 0, 1, 0) for slot in range(B)]
                row_state = self.ngram.row_state(padding, self.spec.mtp_steps, [False] * B)
            self._draft_graph.capture(
                hidden, tokens, positions, last, slots, *row_state, static_kv_len=window
            )
        log.info(
            "cuda graphs captured at start-up: prefill lengths %s; verify%s for batch buckets "
            "%s, cache window %d; in %.1f s",
            self._prefill_lengths,
            " and draft" if self._draft_graph is not None and self.adaptive is None else "",
            self._buckets,
            window,
            time.perf_counter() - started,
        )

    # ---------------------------------------------------------------- threading front end

    def submit(self, request: Request) -> None:
        with self._lock:
            self._waiting.append(request)
            self._lock.notify()

    @classmethod
    def on_own_thread(cls, config: EngineConfig) -> Engine:
        """An engine built on the thread that will run its loop (the server's way).

        Why: with OpenMP (libgomp) every thread that runs parallel torch work keeps its own
        team of worker threads. A model loaded on the main thread and stepped on another leaves
        two teams, more OpenMP threads than cores on a small CPU, and libgomp then makes its
        workers sleep between parallel regions instead of spinning: each of the ~1,500 small
        ops of a forward pays a wake-up (measured on the 2-core VM: one bf16 forward 38.8 ms on
        a second thread vs 30.3 ms on the loading thread). Here the whole engine, loading and
        warm-up included, lives on one thread, with the caller's torch thread count.
        `start()` then runs the loop on that thread; it raises what the construction raised.
        """
        threads = torch.get_num_threads()  # an OpenMP thread count is per thread: carry it
        built: queue.SimpleQueue[Engine | BaseException] = queue.SimpleQueue()
        go = threading.Event()

        def run() -> None:
            torch.set_num_threads(threads)
            try:
                engine = cls(config)
            except BaseException as exc:  # handed to the caller, raised there
                built.put(exc)
                return
            engine._go = go
            built.put(engine)
            go.wait()
            engine._loop()

        thread = threading.Thread(target=run, name="refserver-engine", daemon=True)
        thread.start()
        got = built.get()
        if isinstance(got, BaseException):
            raise got
        got._thread = thread
        return got

    def start(self) -> None:
        self._running = True
        if self._go is not None:  # built by on_own_thread: its thread runs the loop
            self._go.set()
            return
        self._thread = threading.Thread(target=self._loop, name="refserver-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify()
        if self._go is not None:
            self._go.set()  # never started: the thread sees it is not running and ends
        if self._thread is not None:
            self._thread.join()
        for req in self._drain_all():
            req.sink(StepOutput([], "", None, finish_reason="abort"))

    @property
    def num_running(self) -> int:
        return sum(s is not None for s in self._slots)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._waiting) or self.num_running > 0 or bool(self._pending)

    def _drain_all(self) -> list[Request]:
        with self._lock:
            reqs = list(self._waiting) + [s.req for s in self._slots if s is not None]
            self._waiting.clear()
            self._slots = [None] * len(self._slots)
            self._pending = []
        return reqs

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self.has_work():
                    self._lock.wait()
                if not self._running:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug outside any one request: answer everyone, go on
                log.exception("engine step failed outside any one request")
                for s in self._slots:
                    if s is not None:
                        self._fail(s.req, exc, s.slot)

    def generate(self, requests: Sequence[Request]) -> None:
        """Run `requests` to completion on the calling thread (tests, benchmarks, offline use)."""
        for r in requests:
            self.submit(r)
        while self.has_work():
            self.step()

    # ---------------------------------------------------------------- one engine step

    @torch.inference_mode()
    def step(self) -> None:
        started = time.perf_counter()
        for i, s in enumerate(self._slots):
            if s is not None and s.req.cancelled:
                log.info("%s cancelled; slot %d freed", s.req.request_id, i)
                self._slots[i] = None
        to_draft: list[tuple[_Sequence, MTPInput]] = []
        rows = [s for s in self._slots if s is not None]
        if not rows:
            self._deliver_pending()  # no forward to overlap with
        to_draft += self._verify(rows)  # under overlap it delivers the last step's outputs
        admitted = self._admit()
        to_draft += admitted
        if to_draft:
            self._draft(to_draft)
        if self.adaptive:
            self.adaptive.costs.record_step(time.perf_counter() - started, typical=not admitted)
        self.counters.running, self.counters.waiting = self.num_running, self.num_waiting

    def _admit(self) -> list[tuple[_Sequence, MTPInput]]:
        admitted = []
        while True:
            with self._lock:
                free = [i for i, s in enumerate(self._slots) if s is None]
                if not free or not self._waiting:
                    return admitted
                req = self._waiting.popleft()
            if req.cancelled:
                continue
            seed = req.params.seed if req.params.seed is not None else self._rng.getrandbits(63)
            try:
                seq = _Sequence(
                    req=req,
                    slot=free[0],
                    metrics=RequestMetrics(self.K),
                    generator=torch.Generator().manual_seed(seed),
                    detokenizer=IncrementalDecoder(self.tokenizer),
                    adaptive=self.adaptive.new_request() if self.adaptive else None,
                )
                self._slots[seq.slot] = seq
                if self.ngram is not None:
                    self.ngram.admit(seq.slot, req.prompt_ids, req.params.max_tokens)
                item = self._prefill(seq)
            except Exception as exc:
                self._fail(req, exc, free[0])
                continue
            if item is not None:
                admitted.append(item)

    def _prefill(self, seq: _Sequence) -> tuple[_Sequence, MTPInput] | None:
        """The prompt's forward and first token. Under use_cudagraph the prompt is padded to a
        captured length (`cuda_graphs.prefill_lengths`) and replayed: the padding writes KV
        past the prompt, which no query reads before the next steps overwrite it."""
        ids = seq.req.prompt_ids
        n = len(ids)
        graph = self._prefill_graph
        T = n if graph is None else bucket_for(self._prefill_lengths, n)
        table = host_ints_to([*ids, *[0] * (T - n), *range(T), seq.slot, n - 1], self.device)
        args = table[:T][None], table[T : 2 * T][None], table[2 * T : 2 * T + 1], table[-1:]
        if graph is None:
            hidden, logits = self._prefill_forward(*args)
        else:
            window = bucket_for(self._kv_buckets, T)
            hidden, logits = graph(*args, static_kv_len=window)
        hidden = hidden[0, :n].clone()  # a graph's output is overwritten by its next replay
        seq.kv_len = n
        self.counters.record_tokens(prompt=n)
        _, emitted = self._accept(seq, logits, [])
        self._take(seq, emitted, logits, num_drafts=0)
        if seq.done or seq.finished:
            return None
        return seq, MTPInput(seq.slot, hidden, [*ids[1:], seq.last_token], 0)

    def _prefill_forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        slots: Tensor,
        last: Tensor,
        static_kv_len: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The prefill graph's phase: (hidden [1, T, d], float32 logits [1, V] at the prompt's
        last position `last` [1])."""
        hidden = self.model(
            tokens, positions, self.cache, slots, static_kv_len=static_kv_len, prefix_slots=False
        )
        return hidden, self.model.logits(hidden[0, last])

    def _fail(self, req: Request, exc: Exception, slot: int | None) -> None:
        """End one request with an error response and free its slot; no other row is touched."""
        log.error("%s failed: %s: %s", req.request_id, type(exc).__name__, exc, exc_info=exc)
        if slot is not None and self._slots[slot] is not None and self._slots[slot].req is req:
            self._slots[slot].failed = True
            self._slots[slot] = None
        for p in self._pending:
            if p.seq.req is req:
                p.seq.failed = True
        error = f"{type(exc).__name__}: {exc}"
        try:
            req.sink(StepOutput([], "", None, finish_reason="error", error=error))
        except Exception:  # the client side is gone (e.g. its event loop closed)
            log.exception("%s: could not deliver the error", req.request_id)

    def _in_groups(
        self, phase: Callable[[list[_Sequence]], _T], rows: list[_Sequence]
    ) -> list[tuple[list[_Sequence], _T]]:
        """`phase` over all rows at once; if that raises, over each row alone, failing only the
        rows that raise alone. Phases passed here change nothing but their rows' own cache
        positions (rewritten identically on retry), so a retry is safe."""
        try:
            return [(rows, phase(rows))]
        except Exception as exc:
            if len(rows) == 1:
                self._fail(rows[0].req, exc, rows[0].slot)
                return []
            log.warning("batched %s raised %r; retrying row by row", phase.__name__, exc)
        groups = []
        for s in rows:
            try:
                groups.append(([s], phase([s])))
            except Exception as exc:
                self._fail(s.req, exc, s.slot)
        return groups

    def _verify(self, rows: list[_Sequence]) -> list[tuple[_Sequence, MTPInput]]:
        """One target forward over every row's draft, then acceptance row by row."""
        if not rows:
            return []
        out = []
        for group, (hidden, logits, argmax) in self._in_groups(self._forward, rows):
            for b, s in enumerate(group):
                if s.finished or self._slots[s.slot] is not s:
                    continue  # ended (stop string, error) while its step was computed: discarded
                try:
                    item = self._accept_row(s, hidden[b], logits[b], argmax[b])
                except Exception as exc:
                    self._fail(s.req, exc, s.slot)
                    continue
                if item is not None:
                    out.append(item)
        return out

    def _forward(self, rows: list[_Sequence]) -> tuple[Tensor, Tensor, list[list[int]]]:
        """(hidden, logits, argmax) of `[last token, drafts...]` for every row, padded to T
        (K+1 under CUDA graphs). Pending outputs are delivered while the device computes."""
        batch_slots = self._graph_batch(rows)
        graphed = batch_slots is not None
        if batch_slots is None:
            batch_slots = [s.slot for s in rows]
        T = 1 + (self.K if graphed else max(len(s.drafts) for s in rows))
        by_slot = {s.slot: s for s in rows}
        tokens: list[int] = []
        positions: list[int] = []
        for slot in batch_slots:
            s = by_slot.get(slot)
            if s is None:  # a graph's padding row: positions 0.. of a slot nobody reads
                tokens += [0] * T
                positions += range(T)
                continue
            inp = [s.last_token, *s.drafts]
            tokens += inp + [0] * (T - len(inp))
            # Padding continues the row's positions: it writes KV beyond the row's real tokens,
            # which no real query reads and the next step overwrites.
            positions += range(s.kv_len, s.kv_len + T)
        B = len(batch_slots)
        started = time.perf_counter()
        inputs = host_ints_to(tokens + positions + batch_slots, self.device)  # one copy
        args = inputs[: B * T].view(B, T), inputs[B * T : 2 * B * T].view(B, T), inputs[2 * B * T :]
        if graphed:
            # The smallest captured cache window holding every position this step reads.
            window = bucket_for(self._kv_buckets, max(s.kv_len for s in rows) + T)
            hidden, logits, argmax = self._verify_graph(*args, static_kv_len=window)
        else:
            hidden, logits, argmax = self._verify_batch(*args)
        order = [batch_slots.index(s.slot) for s in rows]
        if order != list(range(B)):  # a graph's rows are slots 0..bucket-1: copy out ours
            index = torch.tensor(order, device=self.device)
            hidden, logits, argmax = hidden[index], logits[index], argmax[index]
        delivering = time.perf_counter()
        if self.overlap:
            self._deliver_pending()  # host work of the last step, while the device works
        delivering = time.perf_counter() - delivering
        argmax = argmax.tolist()  # one host copy for the greedy rows
        if self.adaptive:  # the verify's cost, without the overlapped delivery
            self.adaptive.costs.record_verify(T, time.perf_counter() - started - delivering)
        return hidden, logits, argmax

    def _verify_batch(
        self, tokens: Tensor, positions: Tensor, slots: Tensor, static_kv_len: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The target's verify forward: (hidden, float32 logits, argmax). The verify graph's
        phase under use_cudagraph (static_kv_len set, slots == 0..bucket-1)."""
        hidden = self.model(tokens, positions, self.cache, slots, static_kv_len=static_kv_len)
        logits = self.model.logits(hidden)  # [B, T, V] float32
        return hidden, logits, logits.argmax(-1)

    def _graph_batch(self, rows: list[_Sequence]) -> list[int] | None:
        """Slots 0..bucket-1 when `rows` can run as a captured graph: graphs are on and every
        slot of the bucket that is not one of `rows` is free or done (so its padding row
        overwrites nothing that is read). None: run eagerly on `rows` alone."""
        if self._verify_graph is None:
            return None
        n = 1 + max(s.slot for s in rows)
        bucket = next((b for b in self._buckets if b >= n), None)
        if bucket is None:
            return None
        members = {s.slot for s in rows}
        for slot in range(bucket):
            other = self._slots[slot]
            if slot not in members and other is not None and not other.done:
                return None
        return list(range(bucket))

    def _accept_row(
        self, s: _Sequence, hidden: Tensor, logits: Tensor, argmax: list[int]
    ) -> tuple[_Sequence, MTPInput] | None:
        n = 1 + len(s.drafts)
        accepted, emitted = self._accept(s, logits[:n], s.drafts, argmax)
        if s.adaptive:
            s.adaptive.observe(accepted)
        start = s.kv_len
        s.kv_len += accepted + 1  # last token + accepted drafts are now valid in the cache
        num_drafts, s.drafts = len(s.drafts), []
        self._take(s, emitted, logits[:n], num_drafts)
        if s.done or s.finished:
            return None
        return s, MTPInput(s.slot, hidden[: accepted + 1], emitted, start)

    def _accept(
        self, seq: _Sequence, logits: Tensor, drafts: list[int], argmax: list[int] | None = None
    ) -> tuple[int, list[int]]:
        """(accepted drafts, emitted tokens) for logits [len(drafts)+1, V] of one row;
        `argmax`: the row's argmax when already known (unused under min_tokens)."""
        p = seq.req.params
        short = p.min_tokens - len(seq.out_ids)  # positions that must not end the sequence
        if p.greedy and short <= 0 and argmax is not None:
            return verify_greedy(argmax, drafts)
        if short > 0:
            logits = logits.clone()
            logits[:short, self._stop_ids] = float("-inf")
        if p.greedy:
            return verify_greedy(logits.argmax(-1).tolist(), drafts)
        probs = target_probs(logits, p.temperature, p.top_p).cpu()
        return verify_sampling(probs, drafts, seq.generator)

    def _take(self, seq: _Sequence, emitted: list[int], logits: Tensor, num_drafts: int) -> None:
        """Token-level acceptance of one step: append `emitted` up to EOS / max_tokens (which
        need no text), take its logprobs while the logits exist, and queue the output (under
        the overlap schedule it is delivered during the next step's forward)."""
        kept: list[int] = []
        finish = None
        for t in emitted:
            kept.append(t)
            seq.out_ids.append(t)
            finish = self._token_finish(seq, t, len(seq.out_ids))
            if finish is not None:
                seq.done = True
                self._free_slot(seq)  # at once: admission does not wait for the output
                break
        logprobs = self._logprobs(logits[: len(kept)], kept) if seq.req.params.logprobs else None
        pending = _PendingOutput(seq, kept, logprobs, num_drafts, finish)
        if self.overlap:
            self._pending.append(pending)
        else:
            self._deliver(pending)

    def _token_finish(self, seq: _Sequence, token: int, count: int) -> str | None:
        """'stop' (EOS after min_tokens) or 'length' (max_tokens) when the `count`-th token
        `token` ends the sequence, whatever its text."""
        p = seq.req.params
        if token in self.tokenizer.stop_ids and count > p.min_tokens:
            return "stop"
        return "length" if count >= p.max_tokens else None

    def _deliver_pending(self) -> None:
        pending, self._pending = self._pending, []
        for p in pending:
            try:
                self._deliver(p)
            except Exception as exc:
                self._fail(p.seq.req, exc, p.seq.slot)

    def _deliver(self, p: _PendingOutput) -> None:
        """One step's output for one sequence: its text (a stop string may end it earlier than
        its tokens did), the step's metrics, and what the client may see so far."""
        seq = p.seq
        if seq.finished or seq.failed or seq.req.cancelled:
            return  # failed or cancelled meanwhile, or a stop string ended it a step ago
        kept, finish = self._keep_until_finish(seq, p.tokens, p.finish)
        self._record_step(seq, p.num_drafts, len(kept))
        seq.finished = finish is not None
        if seq.finished:  # a stop string may have ended it before its tokens did
            del seq.out_ids[seq.num_output :]
        out = StepOutput(
            token_ids=kept,
            text=self._next_text_delta(seq),
            logprobs=p.logprobs[: len(kept)] if p.logprobs is not None else None,
            finish_reason=finish,
            metrics=seq.metrics.to_dict() if seq.finished else None,
            prompt_tokens=len(seq.req.prompt_ids),
            completion_tokens=seq.num_output,
        )
        if seq.finished:
            self._free_slot(seq)
            self.counters.record_tokens(finished=1)
        seq.req.sink(out)

    def _keep_until_finish(
        self, seq: _Sequence, tokens: list[int], token_finish: str | None
    ) -> tuple[list[int], str | None]:
        """Detokenize `tokens` into seq.text up to the first that finishes the sequence (a
        stop string, or `token_finish` at the last one); the kept tokens and the reason."""
        kept: list[int] = []
        for j, t in enumerate(tokens):
            kept.append(t)
            seq.num_output += 1
            last = token_finish if j == len(tokens) - 1 else None
            finish = self._append_text(seq, t, last)
            if finish is not None:
                return kept, finish
        return kept, None

    def _append_text(self, seq: _Sequence, token: int, token_finish: str | None) -> str | None:
        """Detokenize one token into seq.text; 'stop' or 'length' when it ends the sequence
        (the text then ends at the stop string's start, or with a dangling partial character
        flushed), None otherwise. `token_finish`: what `_token_finish` said of this token."""
        p = seq.req.params
        if token_finish == "stop":  # EOS: the end, a dangling partial char shows
            seq.text += seq.detokenizer.flush()
            return "stop"
        # Text token by token: the token that completes a stop string is the last one kept.
        searched = len(seq.text)
        seq.text += seq.detokenizer.add(token)
        cut = _find_stop(seq.text, p.stop, searched) if p.stop else None
        if cut is not None:
            seq.text = seq.text[:cut]
            return "stop"
        if token_finish == "length":
            seq.text += seq.detokenizer.flush()
            return "length"
        return None

    def _record_step(self, seq: _Sequence, num_drafts: int, num_kept: int) -> None:
        """The request's speculate_metrics and the server-wide counters for one step."""
        seq.metrics.record(num_kept)
        self.counters.record_verify(num_drafts, num_kept)
        self.counters.record_tokens(generated=num_kept)

    @staticmethod
    def _next_text_delta(seq: _Sequence) -> str:
        """The text not yet sent that may be sent now, and mark it sent. While the sequence
        runs, a possible prefix of a stop string is held back: it must not reach the client if
        the stop completes. (A partial UTF-8 character never reaches seq.text before it
        completes.)"""
        sendable = seq.text
        if not seq.finished:
            hold = max((len(s) for s in seq.req.params.stop), default=1) - 1
            if hold:
                sendable = sendable[: max(len(sendable) - hold, seq.text_sent)]
        delta, seq.text_sent = sendable[seq.text_sent :], max(len(sendable), seq.text_sent)
        return delta

    def _free_slot(self, seq: _Sequence) -> None:
        """A finished sequence gives its slot back (unless it was freed already)."""
        if self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None

    def _logprobs(self, logits: Tensor, tokens: list[int]) -> list[TokenLogprob]:
        """Log-probabilities of the raw target distribution (before temperature / top-p)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        top_v, top_i = logp.topk(MAX_TOP_LOGPROBS, dim=-1)
        chosen = logp[torch.arange(len(tokens)), torch.tensor(tokens, device=logp.device)]
        out = []
        for j, t in enumerate(tokens):
            top = tuple(zip(top_i[j].tolist(), top_v[j].tolist(), strict=True))
            out.append(TokenLogprob(t, float(chosen[j]), top))
        return out

    def _draft(self, items: list[tuple[_Sequence, MTPInput]]) -> None:
        """Next drafts for every row that goes on: MTP first, then the n-gram extension."""
        if self.K == 0:
            return
        # Adaptive rows see what the n-gram lookup offers on the verified text before they plan.
        found: dict[int, list[int]] = {}
        if self.adaptive is not None and self.ngram is not None:
            for group, drafts in self._in_groups(self._ngram_lookup, [s for s, _ in items]):
                found.update((id(s), d) for s, d in zip(group, drafts, strict=True))
            items = [(s, inp) for s, inp in items if not s.failed]  # its lookup raised: ended
        plans = {id(s): self._plan(s, inp, found.get(id(s))) for s, inp in items}

        def draft_rows(seqs: list[_Sequence]) -> list[list[int]]:
            # A plan without MTP drafts takes the lookup's drafts: that is the op's output for
            # this row with no MTP drafts, so nothing is computed twice.
            own = [found.get(id(s)) if plans[id(s)].mtp_steps == 0 else None for s in seqs]
            rest = [s for s, d in zip(seqs, own, strict=True) if d is None]
            drafted = iter(draft_model_rows(rest) if rest else [])
            return [next(drafted) if d is None else d for d in own]

        def draft_model_rows(seqs: list[_Sequence]) -> list[list[int]]:
            row_plans = [plans[id(s)] for s in seqs]
            rows = [self._draft_row(s, p.mtp_steps) for s, p in zip(seqs, row_plans, strict=True)]
            # Adaptive rows draft what pays for each of them, which a captured graph cannot.
            if self._draft_graph is not None and self.adaptive is None:
                batch_slots = self._graph_batch(seqs)
                if batch_slots is not None:
                    mtp_inputs = [p.mtp_input for p in row_plans]
                    return self._draft_graphed(rows, mtp_inputs, batch_slots)
            mtp_drafts = self._mtp_drafts(row_plans)
            if self.ngram is None:
                table = mtp_drafts.tolist()
                return [d[: p.mtp_steps] for d, p in zip(table, row_plans, strict=True)]
            return self.ngram.extend(rows, mtp_drafts)

        for group, drafts in self._in_groups(draft_rows, [s for s, _ in items]):
            for s, d in zip(group, drafts, strict=True):
                # Drafts past max_tokens could never be emitted; verifying them is wasted work.
                room = s.req.params.max_tokens - len(s.out_ids) - 1
                s.drafts = list(d[: min(plans[id(s)].max_drafts, max(room, 0))])
                if s.adaptive:
                    s.adaptive.drafted(plans[id(s)], room, len(s.drafts))

    def _ngram_lookup(self, seqs: list[_Sequence]) -> list[list[int]]:
        """Each row's op drafts with no MTP drafts, from the verified text alone (one op
        call), for the adaptive policy."""
        assert self.ngram is not None
        return self.ngram.extend([self._draft_row(s, 0) for s in seqs], None)

    def _plan(self, s: _Sequence, mtp_input: MTPInput, found: list[int] | None) -> Plan:
        """The configured drafts, or with "adaptive": true what pays for this row now
        (`found`: the n-gram lookup's drafts without MTP, None without a lookup)."""
        mtp_input_or_none = mtp_input if self.mtp is not None else None
        if s.adaptive is None:
            return Plan(self.spec.mtp_steps, self.K, mtp_input_or_none)
        return self.adaptive.plan(
            s.adaptive, mtp_input_or_none, None if found is None else len(found)
        )

    def _mtp_drafts(self, plans: list[Plan]) -> Tensor | None:
        """[len(plans), s] MTP drafts on the device, None without MTP. A row whose plan runs
        fewer than s steps (adaptive) has its own count in its DraftRow; the columns past it
        are not read."""
        if self.mtp is None:
            return None
        s = self.spec.mtp_steps
        mtp_rows = [b for b, p in enumerate(plans) if p.mtp_steps]
        drafts = torch.zeros((len(plans), s), dtype=torch.int64, device=self.device)
        if not mtp_rows:
            return drafts
        steps = max(plans[b].mtp_steps for b in mtp_rows)
        started = time.perf_counter()
        out = self.mtp.draft([plans[b].mtp_input for b in mtp_rows], steps)
        if self.adaptive:
            mtp_plans = [plans[b] for b in mtp_rows]
            self.adaptive.costs.record_mtp(steps, time.perf_counter() - started, mtp_plans)
        if len(mtp_rows) == len(plans) and steps == s:
            return out
        drafts[torch.tensor(mtp_rows, device=self.device), :steps] = out.to(torch.int64)
        return drafts

    def _draft_row(self, s: _Sequence, num_mtp: int) -> DraftRow:
        """The row's n-gram state: its newly accepted tokens are recorded first."""
        if self.ngram is not None:
            self.ngram.record(s.slot, s.num_recorded, s.out_ids[s.num_recorded :])
            s.num_recorded = len(s.out_ids)
        return DraftRow(s.slot, s.last_token, len(s.out_ids), s.kv_len, num_mtp)

    def _draft_graphed(
        self, rows: list[DraftRow], inputs: list[MTPInput], batch_slots: list[int]
    ) -> list[list[int]]:
        """MTP drafts and the n-gram op for slots 0..bucket-1, replayed as one CUDA graph."""
        assert self.mtp is not None and self._draft_graph is not None
        width = 1 + self.K  # pairs per row: accepted drafts + the bonus token
        inputs = self.mtp.fill_long(inputs, width)
        mtp_batch = self.mtp.batch(inputs, batch_slots, width)
        # Positions read: the rows' pairs, then s - 1 chained steps after the last one.
        reach = max(x.start + len(x.next_tokens) for x in inputs) + self.spec.mtp_steps
        window = bucket_for(self._kv_buckets, reach)
        row_state: tuple[Tensor, ...] = ()
        if self.ngram is not None:
            by_slot = {r.slot: r for r in rows}
            padded = [by_slot.get(slot, DraftRow(slot, 0, 1, 0)) for slot in batch_slots]
            active = [slot in by_slot for slot in batch_slots]
            row_state = self.ngram.row_state(padded, self.spec.mtp_steps, active)
            self.ngram.write_pending()
        drafts, lengths = self._draft_graph(*mtp_batch, *row_state, static_kv_len=window)
        table = read_drafts(drafts, lengths)
        return [table[batch_slots.index(r.slot)] for r in rows]

    def _draft_batch(
        self,
        hidden: Tensor,
        tokens: Tensor,
        positions: Tensor,
        last: Tensor,
        slots: Tensor,
        *row_state: Tensor,
        static_kv_len: int,
    ) -> tuple[Tensor, Tensor]:
        """The draft graph's phase, device work only: MTP drafts, then the op (pad_to_max).
        `static_kv_len`: the MTP cache window read (holds every position of the step)."""
        assert self.mtp is not None
        steps = self.spec.mtp_steps
        mtp_drafts = self.mtp.draft_batch(
            hidden, tokens, positions, last, slots, steps, static_kv_len=static_kv_len
        )
        if self.ngram is None:
            first = tokens[torch.arange(len(slots), device=slots.device), last]  # bonus tokens
            return torch.cat([first[:, None], mtp_drafts], 1), torch.full_like(last, 1 + steps)
        return self.ngram.run(*row_state, mtp_drafts)


def _graphs_label(
    verify: GraphedPhase | None, draft: GraphedPhase | None, buckets: list[int]
) -> str:
    if verify is None:
        return "off"
    phases = "verify" + (" + draft" if draft is not None else "")
    compiled = ", torch.compile'd (graph_opt_level 2)" if verify.compiled else ""
    return f"{phases}, buckets {buckets}{compiled}"


def _draft_vocab(config: EngineConfig) -> int:
    """The MTP draft vocabulary size: as configured, or the default when the rank file is there."""
    if config.mtp_draft_vocab is not None:
        return config.mtp_draft_vocab
    if config.mtp_token_rank_path is not None or DEFAULT_RANK_PATH.is_file():
        return DEFAULT_MTP_DRAFT_VOCAB
    log.warning("MTP drafts use the full vocabulary: no token rank at %s", DEFAULT_RANK_PATH)
    return 0


def _find_stop(text: str, stops: Sequence[str], searched_upto: int) -> int | None:
    """Index where the earliest stop string starts, searching only text that is new."""
    best = None
    for stop in stops:
        i = text.find(stop, max(0, searched_upto - len(stop) + 1))
        if i != -1 and (best is None or i < best):
            best = i
    return best
