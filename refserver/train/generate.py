"""Batched decoding with the frozen target, keeping the hidden states an MTP head trains on.

Rows are prefilled right-padded at their own positions (padding K/V lands beyond each row's
length, where the causal-by-position mask hides it until decoding overwrites it), then decoded
one token per step for the whole batch. Each row is greedy or sampled (temperature) by flag.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from refserver.model import KVCache, Transformer

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
    hidden: Tensor
    prompt_len: int
    greedy: bool


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
    cache = model.new_cache(B, max_len)
    stop = torch.tensor(sorted(stop_ids), device=device)
    results: dict[int, Sample] = {}
    t0 = time.monotonic()
    n_tokens = 0
    for start in range(0, len(order), B):
        if time.monotonic() - t0 > cfg.time_budget_s:
            log.warning("generation time budget %.0fs spent: %d of %d prompts skipped",
                        cfg.time_budget_s, len(order) - start, len(order))
            break
        idx = order[start : start + B]
        samples = _generate_batch(model, [prompts[i] for i in idx], cache, stop, cfg, gen)
        for i, s in zip(idx, samples, strict=True):
            results[i] = s
            n_tokens += len(s.tokens) - s.prompt_len
        log.info("generated batch %d: %d rows, %d new tokens so far, %.0f new tok/s",
                 start // B, len(idx), n_tokens, n_tokens / (time.monotonic() - t0))
    return [results[i] for i in range(len(prompts)) if i in results]


def _generate_batch(
    model: Transformer,
    prompts: list[list[int]],
    cache: KVCache,
    stop: Tensor,
    cfg: GenConfig,
    gen: torch.Generator,
) -> list[Sample]:
    device = stop.device
    b = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    T = int(lens.max())
    tokens = torch.zeros(b, T, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        tokens[r, : len(p)] = torch.tensor(p, device=device)
    slots = torch.arange(b, device=device)
    positions = torch.arange(T, device=device)[None].expand(b, T)
    hid_prompt = model(tokens, positions, cache, slots)  # [b, T, d]
    rows = torch.arange(b, device=device)
    # Deterministic per-row choice of greedy vs sampled, independent of batch composition.
    sampled = torch.rand(b, generator=gen, device=device) < cfg.sample_fraction

    def choose(h: Tensor) -> Tensor:
        logits = model.logits(h)
        nxt = logits.argmax(-1)
        if bool(sampled.any()):
            probs = torch.softmax(logits / cfg.temperature, dim=-1)
            drawn = torch.multinomial(probs, 1, generator=gen)[:, 0]
            nxt = torch.where(sampled, drawn, nxt)
        return nxt

    nxt = choose(hid_prompt[rows, lens - 1])
    d = hid_prompt.shape[-1]
    out_tok = torch.zeros(b, cfg.max_new_tokens, dtype=torch.long, device=device)
    out_hid = torch.zeros(b, cfg.max_new_tokens, d, dtype=hid_prompt.dtype, device=device)
    gen_len = torch.full((b,), cfg.max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    pos = lens.clone()
    for step in range(cfg.max_new_tokens):
        out_tok[:, step] = nxt
        just_done = ~done & torch.isin(nxt, stop)
        gen_len = torch.where(just_done, step + 1, gen_len)
        done |= just_done
        if step == cfg.max_new_tokens - 1 or bool(done.all()):
            break
        h = model(nxt[:, None], pos[:, None], cache, slots)[:, 0]
        out_hid[:, step] = h
        nxt = choose(h)
        pos = pos + 1
    samples = []
    lens_l, gen_l, sampled_l = lens.tolist(), gen_len.tolist(), sampled.tolist()
    for r in range(b):
        n_p, n_g = lens_l[r], gen_l[r]
        toks = torch.cat([tokens[r, :n_p], out_tok[r, :n_g]])
        hid = torch.cat([hid_prompt[r, :n_p], out_hid[r, : n_g - 1]])
        samples.append(Sample(toks, hid, n_p, not sampled_l[r]))
    return samples
