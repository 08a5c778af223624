"""Batched decoding with the frozen target, keeping the hidden states an MTP head trains on.

Rows are prefilled left-padded, then decoded one token per step for the whole batch (see
`_Decoder`). Each row is greedy or sampled (temperature) by flag. Stopped rows keep decoding
until every row of the batch has stopped (checked every 8 steps); their extra tokens are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from refserver.model import Transformer, rope_rotation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenConfig:
    batch_size: int = 512
    max_new_tokens: int = 320
    sample_fraction: float = 0.0  # share of rows decoded by sampling instead of greedy
    temperature: float = 0.8
    seed: int = 0
    time_budget_s: float = float("inf")  # no new batch starts after this


@dataclass
class Sample:
    """tokens [n] (prompt + answer, stop token included); hidden [n - 1, d]: the target's
    pre-final-norm hidden state at every token but the last; prompt_len; greedy flag."""

    tokens: Tensor
    hidden: Tensor | None  # None for samples read back as token ids (see `recompute_hidden`)
    prompt_len: int
    greedy: bool
    index: int = -1  # position of its prompt in the list given to `generate`
    source: int = 0  # generation pass that produced it (0 = original prompts)

    def truncated(self, max_new_tokens: int) -> Sample:
        """The same sample with its answer cut to `max_new_tokens` (a greedy answer cut at n
        tokens is what a request with max_tokens=n gets)."""
        n = min(len(self.tokens), self.prompt_len + max_new_tokens)
        hidden = None if self.hidden is None else self.hidden[: n - 1]
        return Sample(
            self.tokens[:n], hidden, self.prompt_len, self.greedy, self.index, self.source
        )


@torch.no_grad()
def generate(
    model: Transformer, prompts: list[list[int]], stop_ids: set[int], cfg: GenConfig
) -> list[Sample]:
    """Answer every prompt (token ids); returns Samples in the order of `prompts` (those skipped
    because the time budget ran out are missing, and the log says how many)."""
    if not prompts:
        return []
    device = model.tok_embeddings.weight.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    max_prompt = max(len(p) for p in prompts)
    max_len = max_prompt + cfg.max_new_tokens + 1
    B = min(cfg.batch_size, len(prompts))
    dec = _Decoder(model, B, max_len)
    stop = torch.tensor(sorted(stop_ids), device=device)
    results: dict[int, Sample] = {}
    t0 = time.monotonic()
    n_tokens = 0
    for start in range(0, len(order), B):
        if time.monotonic() - t0 > cfg.time_budget_s:
            log.warning(
                "generation time budget %.0fs spent: %d of %d prompts skipped",
                cfg.time_budget_s,
                len(order) - start,
                len(order),
            )
            break
        idx = order[start : start + B]
        samples = _generate_batch(model, [prompts[i] for i in idx], dec, stop, cfg, gen)
        for i, s in zip(idx, samples, strict=True):
            s.index = i
            results[i] = s
            n_tokens += len(s.tokens) - s.prompt_len
        log.info(
            "generated batch %d: %d rows, %d new tokens so far, %.0f new tok/s",
            start // B,
            len(idx),
            n_tokens,
            n_tokens / (time.monotonic() - t0),
        )
    return [results[i] for i in range(len(prompts)) if i in results]


@torch.no_grad()
def recompute_hidden(
    model: Transformer, samples: list[Sample], max_batch_tokens: int = 131072, max_rows: int = 256
) -> list[Sample]:
    """The samples with `hidden` recomputed by one batched prefill over each whole sequence (the
    target is deterministic, so token ids are enough to store training data: this costs ~1/50 of
    generating them). Returns new Samples on the model's device, in the given order."""
    if not samples:
        return []
    device = model.tok_embeddings.weight.device
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].tokens))
    batches: list[list[int]] = [[]]
    for i in order:  # ascending length: the last row added is the longest
        rows = len(batches[-1]) + 1
        if rows > max_rows or rows * len(samples[i].tokens) > max_batch_tokens:
            batches.append([])
        batches[-1].append(i)
    max_len = len(samples[order[-1]].tokens)
    dec = _Decoder(model, max(len(b) for b in batches), max_len)
    out: list[Sample | None] = [None] * len(samples)
    for idx in batches:
        seqs = [samples[i].tokens for i in idx]
        T = max(len(t) for t in seqs)
        tokens = torch.zeros(len(idx), T, dtype=torch.long, device=device)
        valid = torch.ones(len(idx), max_len, dtype=torch.bool, device=device)
        for r, t in enumerate(seqs):
            tokens[r, T - len(t) :] = t.to(device)
            valid[r, : T - len(t)] = False
        hid = dec.prefill(tokens, valid)
        for r, i in enumerate(idx):
            s, n = samples[i], len(seqs[r])
            out[i] = Sample(
                s.tokens.to(device),
                hid[r, T - n : T - 1].clone(),
                s.prompt_len,
                s.greedy,
                s.index,
                s.source,
            )
    return out  # type: ignore[return-value]


class _Decoder:
    """Left-padded batched decoding over the target's own weights, with no host sync per layer.

    `Transformer.forward` syncs with the host once per forward to lay out its cache reads, which
    made generation sync-bound on the GPU machine. Here all rows share one column index per
    step: prompts are left-padded and a key mask hides the padding. RoPE only sees position
    differences, so a row shifted right by its padding gets the same hidden states as at its
    true positions (up to rounding; a test pins them to `Transformer.forward`). The layers run
    through the model's own `Attention.project` / `attend` and `Block.mlp_residual`.
    """

    def __init__(self, model: Transformer, batch: int, max_len: int) -> None:
        cfg = model.config
        p = model.tok_embeddings.weight
        self.model = model
        shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)  # KVCache's [slot, pos] layout
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.layers]

    def _layers(self, x: Tensor, rotation: Tensor, write, mask: Tensor) -> Tensor:
        """Every block over x; `write(i, k, v)` stores layer i's new K/V and returns the keys
        and values to attend over; `mask` [b, 1, T, L] boolean, True = visible."""
        for i, blk in enumerate(self.model.layers):
            q, k, v = blk.attention.project(blk.attention_norm(x), rotation)
            keys, values = write(i, k, v)
            x = blk.mlp_residual(x + blk.attention.attend(q, keys, values, mask))
        return x

    def prefill(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """tokens [b, P] (left-padded) at columns 0..P-1; valid [b, max_len] marks real keys.
        Returns the pre-final-norm hidden states [b, P, d]."""
        b, T = tokens.shape
        cols = torch.arange(T, device=tokens.device)
        mask = valid[:, None, :T] & (cols[None, None, :] <= cols[None, :, None])
        mask = mask | (cols[None, None, :] == cols[None, :, None])  # padding sees itself: no NaN

        def write(i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            self.k[i][:b, :T] = k
            self.v[i][:b, :T] = v
            return self.k[i][:b, :T], self.v[i][:b, :T]

        rotation = rope_rotation(cols[None], self.model.config)
        return self._layers(self.model.tok_embeddings(tokens), rotation, write, mask[:, None])

    def step_static(self, tokens: Tensor, col: Tensor, valid: Tensor) -> Tensor:
        """One decode step, tokens [b, 1] at column `col` (a 0-d device tensor); static shapes
        throughout (attention spans the whole cache, masked), so it can be a CUDA graph."""
        b = tokens.shape[0]
        keys = torch.arange(self.k[0].shape[1], device=tokens.device)
        mask = valid & (keys[None, :] <= col)  # [b, max_len]

        def write(i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            # index_copy_ by a device tensor: indexing by a 0-d tensor would read it on the
            # host, which a CUDA graph capture forbids.
            K, V = self.k[i][:b], self.v[i][:b]
            K.index_copy_(1, col.view(1), k)
            V.index_copy_(1, col.view(1), v)
            return K, V

        rotation = rope_rotation(col.view(1, 1), self.model.config)
        return self._layers(self.model.tok_embeddings(tokens), rotation, write, mask[:, None, None])

    def stepper(self, b: int, valid: Tensor) -> _Stepper:
        return _Stepper(self, b, valid)


class _Stepper:
    """Runs `_Decoder.step_static` for one batch, replaying a CUDA graph on CUDA (per-kernel
    launch cost dominated eager decoding on the GPU machine). The graph's first step is checked
    against eager execution; on any mismatch or capture error it falls back to eager."""

    def __init__(self, dec: _Decoder, b: int, valid: Tensor) -> None:
        self.dec = dec
        dev = valid.device
        self.tok = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.col = torch.zeros((), dtype=torch.long, device=dev)
        self.valid = valid
        self.graph = None
        self.checked = False
        if dev.type == "cuda":
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(2):  # warm-up (writes column 0, rewritten before use)
                        dec.step_static(self.tok, self.col, valid)
                torch.cuda.current_stream().wait_stream(stream)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.out = dec.step_static(self.tok, self.col, valid)
            except Exception as e:  # any capture failure: decode eagerly
                log.warning("CUDA graph capture failed (%s); decoding eagerly", e)
                self.graph = None

    def __call__(self, tokens: Tensor, col: int) -> Tensor:
        self.tok.copy_(tokens)
        self.col.fill_(col)
        if self.graph is None:
            return self.dec.step_static(self.tok, self.col, self.valid)
        if not self.checked:
            self.checked = True
            k_saved = [k.clone() for k in self.dec.k]
            v_saved = [v.clone() for v in self.dec.v]
            eager = self.dec.step_static(self.tok, self.col, self.valid).clone()
            for i in range(len(self.dec.k)):
                self.dec.k[i].copy_(k_saved[i])
                self.dec.v[i].copy_(v_saved[i])
            self.graph.replay()
            err = float((self.out.float() - eager.float()).abs().max())
            scale = float(eager.float().abs().max())
            if not err <= 1e-2 * scale:
                log.warning(
                    "CUDA graph step differs from eager (%.3g of %.3g); decoding eagerly",
                    err,
                    scale,
                )
                self.graph = None
                return eager
            log.info(
                "CUDA graph decode step checked against eager: max diff %.3g of %.3g", err, scale
            )
        self.graph.replay()
        return self.out


def _generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    dec: _Decoder,
    stop: Tensor,
    cfg: GenConfig,
    gen: torch.Generator,
) -> list[Sample]:
    device = stop.device
    b = len(prompts)
    P = max(len(p) for p in prompts)
    pads = [P - len(p) for p in prompts]
    tokens = torch.zeros(b, P, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        tokens[r, pads[r] :] = torch.tensor(p, device=device)
    valid = torch.ones(b, dec.k[0].shape[1], dtype=torch.bool, device=device)
    valid[:, :P] = (
        torch.arange(P, device=device)[None] >= torch.tensor(pads, device=device)[:, None]
    )
    step_fn = dec.stepper(b, valid)  # before prefill: its warm-up writes cache column 0
    hid_prompt = dec.prefill(tokens, valid)  # [b, P, d]
    # Deterministic per-row choice of greedy vs sampled.
    sampled = torch.rand(b, generator=gen, device=device) < cfg.sample_fraction
    any_sampled = bool(sampled.any())

    def choose(h: Tensor) -> Tensor:
        logits = model.logits(h)
        nxt = logits.argmax(-1)
        if any_sampled:
            probs = torch.softmax(logits / cfg.temperature, dim=-1)
            drawn = torch.multinomial(probs, 1, generator=gen)[:, 0]
            nxt = torch.where(sampled, drawn, nxt)
        return nxt

    nxt = choose(hid_prompt[:, -1])
    d = hid_prompt.shape[-1]
    out_tok = torch.zeros(b, cfg.max_new_tokens, dtype=torch.long, device=device)
    out_hid = torch.zeros(b, cfg.max_new_tokens, d, dtype=hid_prompt.dtype, device=device)
    gen_len = torch.full((b,), cfg.max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        out_tok[:, step] = nxt
        just_done = ~done & torch.isin(nxt, stop)
        gen_len = torch.where(just_done, step + 1, gen_len)
        done |= just_done
        if step == cfg.max_new_tokens - 1 or (step % 8 == 7 and bool(done.all())):
            break
        h = step_fn(nxt[:, None], P + step)[:, 0]
        out_hid[:, step] = h
        nxt = choose(h)
    samples = []
    gen_l, sampled_l = gen_len.tolist(), sampled.tolist()
    for r in range(b):
        n_g = gen_l[r]
        toks = torch.cat([tokens[r, pads[r] :], out_tok[r, :n_g]])
        hid = torch.cat([hid_prompt[r, pads[r] :], out_hid[r, : n_g - 1]])
        samples.append(Sample(toks, hid, P - pads[r], not sampled_l[r]))
    return samples
