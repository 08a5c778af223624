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
   `hybrid_mtp_ngram` (op or oracle); with `"adaptive": true` each row drafts only as much as
   measurably pays (`refserver/adaptive.py`).

Requests come from other threads through `submit()`; results go back through each request's
`sink` callback, called on the engine thread.

One request can never hurt another: the API validates every parameter, and whatever still raises
inside a step fails only the request it belongs to (`finish_reason="error"` with the message).
A batched forward or draft that raises is retried row by row, so the rows that work go on.
"""

from __future__ import annotations

import itertools
import logging
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
from refserver.drafting import DraftRow, NgramExtender, resolve_impl
from refserver.metrics import PrometheusCounters, RequestMetrics
from refserver.model import Transformer, load_model
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
    out_ids: list[int] = field(default_factory=list)
    kv_len: int = 0  # target KV positions [0, kv_len) are valid
    drafts: list[int] = field(default_factory=list)
    text: str = ""
    text_sent: int = 0
    finished: bool = False
    adaptive: RequestState | None = None  # with "adaptive": true, its acceptance statistics

    @property
    def last_token(self) -> int:
        return self.out_ids[-1]


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
        self.ngram: NgramExtender | None = None
        if self.spec.uses_ngram:
            impl, fn = resolve_impl(config.ngram_impl, self.device)
            self.ngram = NgramExtender(
                impl, fn, self.K, self.spec.max_ngram_size, self.spec.min_ngram_size, self.device
            )
        self.adaptive = (
            AdaptivePolicy(self.K, self.spec.mtp_steps, self.spec.uses_ngram)
            if self.spec.adaptive
            else None
        )
        self.counters = PrometheusCounters(MODEL_NAME, self.K)
        self._stop_ids = sorted(tokenizer.stop_ids)
        self._rng = random.Random(config.seed)
        self._slots: list[_Sequence | None] = [None] * config.max_num_seqs
        self._waiting: deque[Request] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        log.info(
            "engine: %s, max_num_seqs=%d, max_model_len=%d, %s %s, n-gram impl %s",
            self.spec.label,
            config.max_num_seqs,
            config.max_model_len,
            config.device,
            config.dtype,
            self.ngram.impl if self.ngram else "-",
        )

    # ---------------------------------------------------------------- threading front end

    def submit(self, request: Request) -> None:
        with self._lock:
            self._waiting.append(request)
            self._lock.notify()

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="refserver-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify()
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
        return bool(self._waiting) or self.num_running > 0

    def _drain_all(self) -> list[Request]:
        with self._lock:
            reqs = list(self._waiting) + [s.req for s in self._slots if s is not None]
            self._waiting.clear()
            self._slots = [None] * len(self._slots)
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
        to_draft += self._verify([s for s in self._slots if s is not None])
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
                item = self._prefill(seq)
            except Exception as exc:
                self._fail(req, exc, free[0])
                continue
            if item is not None:
                admitted.append(item)

    def _prefill(self, seq: _Sequence) -> tuple[_Sequence, MTPInput] | None:
        ids = seq.req.prompt_ids
        tokens = torch.tensor([ids], device=self.device)
        positions = torch.arange(len(ids), device=self.device)[None]
        slots = torch.tensor([seq.slot], device=self.device)
        hidden = self.model(tokens, positions, self.cache, slots)
        logits = self.model.logits(hidden[:, -1:])[0]  # [1, V]
        seq.kv_len = len(ids)
        self.counters.record_tokens(prompt=len(ids))
        _, emitted = self._accept(seq, logits, [])
        self._emit(seq, emitted, logits, num_drafts=0)
        if seq.finished:
            return None
        return seq, MTPInput(seq.slot, hidden[0], [*ids[1:], seq.last_token], 0)

    def _fail(self, req: Request, exc: Exception, slot: int | None) -> None:
        """End one request with an error response and free its slot; no other row is touched."""
        log.error("%s failed: %s: %s", req.request_id, type(exc).__name__, exc, exc_info=exc)
        if slot is not None and self._slots[slot] is not None and self._slots[slot].req is req:
            self._slots[slot] = None
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
                try:
                    item = self._accept_row(s, hidden[b], logits[b], argmax[b])
                except Exception as exc:
                    self._fail(s.req, exc, s.slot)
                    continue
                if item is not None:
                    out.append(item)
        return out

    def _forward(self, rows: list[_Sequence]) -> tuple[Tensor, Tensor, list[list[int]]]:
        """(hidden, logits, argmax) of `[last token, drafts...]` for every row, padded to T."""
        T = 1 + max(len(s.drafts) for s in rows)
        tokens = torch.zeros((len(rows), T), dtype=torch.long)
        positions = torch.zeros((len(rows), T), dtype=torch.long)
        for b, s in enumerate(rows):
            inp = [s.last_token, *s.drafts]
            tokens[b, : len(inp)] = torch.tensor(inp)
            # Padding continues the row's positions: it writes KV beyond the row's real tokens,
            # which no real query reads and the next step overwrites.
            positions[b] = torch.arange(s.kv_len, s.kv_len + T)
        slots = torch.tensor([s.slot for s in rows])
        dev = self.device
        started = time.perf_counter()
        hidden = self.model(tokens.to(dev), positions.to(dev), self.cache, slots.to(dev))
        logits = self.model.logits(hidden)  # [B, T, V] float32
        argmax = logits.argmax(-1).tolist()  # one host copy for the greedy rows
        if self.adaptive:
            self.adaptive.costs.record_verify(T, time.perf_counter() - started)
        return hidden, logits, argmax

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
        self._emit(s, emitted, logits[:n], num_drafts)
        if s.finished:
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

    def _emit(self, seq: _Sequence, emitted: list[int], logits: Tensor, num_drafts: int) -> None:
        """One step's output for one sequence: keep the tokens up to the first finish, record
        the step, and send the client what it may see so far."""
        kept, finish = self._keep_until_finish(seq, emitted)
        self._record_step(seq, num_drafts, len(kept))
        logprobs = self._logprobs(logits[: len(kept)], kept) if seq.req.params.logprobs else None
        seq.finished = finish is not None
        out = StepOutput(
            token_ids=kept,
            text=self._next_text_delta(seq),
            logprobs=logprobs,
            finish_reason=finish,
            metrics=seq.metrics.to_dict() if seq.finished else None,
            prompt_tokens=len(seq.req.prompt_ids),
            completion_tokens=len(seq.out_ids),
        )
        if seq.finished:
            self._release(seq)
        seq.req.sink(out)

    def _keep_until_finish(
        self, seq: _Sequence, emitted: list[int]
    ) -> tuple[list[int], str | None]:
        """Append `emitted` to the sequence (ids and text) up to the first token that finishes
        it at EOS, a stop string or max_tokens; returns the kept tokens and the finish reason."""
        kept: list[int] = []
        for t in emitted:
            kept.append(t)
            seq.out_ids.append(t)
            finish = self._append_token(seq, t)
            if finish is not None:
                return kept, finish
        return kept, None

    def _append_token(self, seq: _Sequence, token: int) -> str | None:
        """Detokenize one appended token into seq.text; 'stop' or 'length' when it ends the
        sequence (the text then ends at the stop string's start, or with a dangling partial
        character flushed), None otherwise."""
        p, tok = seq.req.params, self.tokenizer
        if token in tok.stop_ids and len(seq.out_ids) > p.min_tokens:
            seq.text += seq.detokenizer.flush()  # the end: a dangling partial char shows
            return "stop"
        # Text token by token: the token that completes a stop string is the last one kept.
        searched = len(seq.text)
        seq.text += seq.detokenizer.add(token)
        cut = _find_stop(seq.text, p.stop, searched) if p.stop else None
        if cut is not None:
            seq.text = seq.text[:cut]
            return "stop"
        if len(seq.out_ids) >= p.max_tokens:
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

    def _release(self, seq: _Sequence) -> None:
        """A finished sequence gives its slot back."""
        self._slots[seq.slot] = None
        self.counters.record_tokens(finished=1)

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
        plans = {id(s): self._plan(s, inp) for s, inp in items}

        def draft_rows(seqs: list[_Sequence]) -> list[list[int]]:
            drafts: list[list[int]] = [[] for _ in seqs]
            mtp_rows = [b for b, s in enumerate(seqs) if plans[id(s)].mtp_steps]
            if mtp_rows:
                mtp_plans = [plans[id(seqs[b])] for b in mtp_rows]
                steps, started = max(p.mtp_steps for p in mtp_plans), time.perf_counter()
                out = self.mtp.draft([p.mtp_input for p in mtp_plans], steps)
                if self.adaptive:
                    self.adaptive.costs.record_mtp(steps, time.perf_counter() - started, mtp_plans)
                for b, p, d in zip(mtp_rows, mtp_plans, out, strict=True):
                    drafts[b] = d[: p.mtp_steps]
            if self.ngram is not None:
                rows = [
                    DraftRow(
                        prompt=s.req.prompt_ids,
                        generated=s.out_ids,
                        mtp_drafts=d,
                        max_tokens=s.req.params.max_tokens,
                        kv_len=s.kv_len,
                    )
                    for s, d in zip(seqs, drafts, strict=True)
                ]
                drafts = self.ngram.extend(rows)
            return drafts

        for group, drafts in self._in_groups(draft_rows, [s for s, _ in items]):
            for s, d in zip(group, drafts, strict=True):
                # Drafts past max_tokens could never be emitted; verifying them is wasted work.
                room = s.req.params.max_tokens - len(s.out_ids) - 1
                s.drafts = list(d[: min(plans[id(s)].max_drafts, max(room, 0))])
                if s.adaptive:
                    s.adaptive.drafted(plans[id(s)], room, len(s.drafts))

    def _plan(self, s: _Sequence, mtp_input: MTPInput) -> Plan:
        """The configured drafts, or with "adaptive": true what pays for this row now."""
        mtp_input_or_none = mtp_input if self.mtp is not None else None
        if s.adaptive is None:
            return Plan(self.spec.mtp_steps, self.K, mtp_input_or_none)
        return self.adaptive.plan(s.adaptive, mtp_input_or_none)


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
