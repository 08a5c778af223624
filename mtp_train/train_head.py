"""Train the MTP head on the frozen target's own generations.

Objective: for every chained step k = 1..s and index t, the KL divergence from the target's
next-token distribution at t + k (what the target itself would predict for token t + k + 1) to
the head's step-k distribution. Step 1 sees the target's hidden state h_t; steps k >= 2 see the
head's own output hidden state of step k - 1 (EAGLE-style "training-time test"), with exactly the
attention pattern the cached `MTPHead.draft` produces (see `MTPHead.chained_forward`).

Data is packed: whole samples (prompt + answer) are laid end to end in rows of `row_len`
tokens; attention never crosses a sample. By default only answer tokens are predicted
(`prompt_weight = 0`): the engine drafts only while generating.

The KL over the 49152-token vocabulary dominates the cost, so `_ChunkedKL` computes loss and
gradient chunk by chunk in its forward pass and never keeps a full logits tensor.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from mtp_train.generate import Sample
from refserver.model import Transformer
from refserver.mtp_head import MTPHead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    chain_steps: int = 3
    step_weights: tuple[float, ...] = (1.0, 0.7, 0.5)
    rows_per_batch: int = 16
    row_len: int = 1024
    lr: float = 6e-4
    min_lr_frac: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    prompt_weight: float = 0.0
    time_budget_s: float = 240.0
    max_steps: int = 1_000_000
    val_every: int = 250
    log_every: int = 50
    loss_chunk: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.step_weights) < self.chain_steps:
            raise ValueError(
                f"step_weights={self.step_weights} has fewer entries than chain_steps={self.chain_steps}"
            )


@dataclass
class Packed:
    """Samples packed into rows. Per index: hidden h_t, token x_t, position t in its sample,
    doc (sample id within the row, -1 = padding), has_hidden (x_t is not its sample's last
    token), is_answer (x_t belongs to the answer)."""

    hidden: Tensor
    tokens: Tensor
    positions: Tensor
    doc: Tensor
    has_hidden: Tensor
    is_answer: Tensor

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    def select(self, rows: Tensor) -> Packed:
        return Packed(
            *(
                getattr(self, f)[rows]
                for f in ("hidden", "tokens", "positions", "doc", "has_hidden", "is_answer")
            )
        )


def pack(samples: list[Sample], row_len: int, device: torch.device) -> Packed:
    """First-fit packing, in the given order, of whole samples into rows of `row_len`."""
    fitting = [s for s in samples if len(s.tokens) <= row_len]
    if len(fitting) < len(samples):
        log.warning(
            "pack: %d samples longer than row_len=%d dropped", len(samples) - len(fitting), row_len
        )
    rows: list[list[Sample]] = []
    fill: list[int] = []
    for s in fitting:
        n = len(s.tokens)
        for r, used in enumerate(fill[-64:], start=max(0, len(fill) - 64)):
            if used + n <= row_len:
                rows[r].append(s)
                fill[r] += n
                break
        else:
            rows.append([s])
            fill.append(n)
    R, d = len(rows), fitting[0].hidden.shape[-1]
    dtype = fitting[0].hidden.dtype
    out = Packed(
        hidden=torch.zeros(R, row_len, d, dtype=dtype, device=device),
        tokens=torch.zeros(R, row_len, dtype=torch.long, device=device),
        positions=torch.zeros(R, row_len, dtype=torch.long, device=device),
        doc=torch.full((R, row_len), -1, dtype=torch.long, device=device),
        has_hidden=torch.zeros(R, row_len, dtype=torch.bool, device=device),
        is_answer=torch.zeros(R, row_len, dtype=torch.bool, device=device),
    )
    for r, row in enumerate(rows):
        at = 0
        for j, s in enumerate(row):
            n = len(s.tokens)
            sl = slice(at, at + n)
            out.tokens[r, sl] = s.tokens.to(device)
            out.hidden[r, at : at + n - 1] = s.hidden.to(device)
            out.positions[r, sl] = torch.arange(n, device=device)
            out.doc[r, sl] = j
            out.has_hidden[r, at : at + n - 1] = True
            out.is_answer[r, at + s.prompt_len : at + n] = True
            at += n
    log.info(
        "packed %d samples into %d rows of %d (%.1f%% filled)",
        len(fitting),
        R,
        row_len,
        100.0 * sum(fill) / max(1, R * row_len),
    )
    return out


def _shift(x: Tensor, k: int, fill: float | bool) -> Tensor:
    """x[:, t + k] at index t (dim 1), `fill` past the end."""
    pad = torch.full_like(x[:, :k], fill)
    return torch.cat([x[:, k:], pad], dim=1)


class _ChunkedKL(torch.autograd.Function):
    """sum_i w_i * KL(softmax(W t_i) || softmax(W s_i)) and its gradient w.r.t. s, chunk by chunk.

    s: the head's normed output [N, d]; t: the target's normed hidden [N, d]; W: shared output
    weight [V, d] (frozen). Also returns the number of rows whose argmaxes agree.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, w: Tensor, W: Tensor, chunk: int):  # type: ignore[override]
        loss = torch.zeros((), dtype=torch.float32, device=s.device)
        agree = torch.zeros((), dtype=torch.long, device=s.device)
        grad = torch.empty_like(s)
        for i in range(0, s.shape[0], chunk):
            sc, tc, wc = (
                s[i : i + chunk].to(W.dtype),
                t[i : i + chunk].to(W.dtype),
                w[i : i + chunk],
            )
            ls = torch.log_softmax((sc @ W.T).float(), dim=-1)
            lt = torch.log_softmax((tc @ W.T).float(), dim=-1)
            pt = lt.exp()
            loss += (wc * (pt * (lt - ls)).sum(-1)).sum()
            agree += (ls.argmax(-1) == lt.argmax(-1)).sum()
            dlogits = (ls.exp_() - pt).mul_(wc[:, None])
            grad[i : i + chunk] = (dlogits.to(W.dtype) @ W).to(s.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(agree)
        return loss, agree

    @staticmethod
    def backward(ctx, gloss: Tensor, _gagree: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * gloss, None, None, None, None


def batch_loss(
    head: MTPHead, target: Transformer, b: Packed, cfg: TrainConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weighted sum over chained steps of the mean KL; also per-step mean KL, top-1 agreement and
    number of predicted tokens, as device tensors [steps] (reading them forces a host sync: do
    it only when logging)."""
    outs = head.chained_forward(b.hidden, b.tokens, b.positions, b.doc, cfg.chain_steps)
    W = target.output.weight
    dev = b.tokens.device
    total = torch.zeros((), device=dev)
    kls = torch.full((cfg.chain_steps,), float("nan"), device=dev)
    agrees = torch.full((cfg.chain_steps,), float("nan"), device=dev)
    counts = torch.zeros(cfg.chain_steps, device=dev)
    for k, g in enumerate(outs, start=1):
        valid = (b.doc >= 0) & (_shift(b.doc, k, -2) == b.doc) & _shift(b.has_hidden, k, False)
        answer = _shift(b.is_answer, k + 1, False)
        w = valid.float() * torch.where(answer, 1.0, cfg.prompt_weight)
        sel = (w > 0).nonzero(as_tuple=True)
        if sel[0].numel() == 0:
            continue
        with torch.no_grad():
            t = target.norm(_shift(b.hidden, k, 0.0)[sel])
        s = head.norm(g[sel])
        wsel = w[sel]
        kl, agree = _ChunkedKL.apply(s, t, wsel, W, cfg.loss_chunk)
        kl = kl / wsel.sum()
        total = total + cfg.step_weights[k - 1] * kl
        kls[k - 1] = kl.detach()
        agrees[k - 1] = agree.float() / sel[0].numel()
        counts[k - 1] = sel[0].numel()
    return total, kls, agrees, counts


@dataclass
class History:
    config: dict
    steps: int = 0
    seconds: float = 0.0
    tokens_seen: int = 0
    train: list[dict] = field(default_factory=list)  # {"step", "kl": [..per step], "agree": [..]}
    val: list[dict] = field(default_factory=list)


def _lr(step: int, frac: float, cfg: TrainConfig) -> float:
    """Linear warm-up over the first steps, then cosine decay over the fraction `frac` of the
    time budget spent. (Run 2 fitted a step count from the first 20 steps' time instead; those
    included warm-up overhead, so it stopped at 165 s of its 270 s budget.)"""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, max(0.0, frac))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def evaluate_loss(
    head: MTPHead, target: Transformer, data: Packed, cfg: TrainConfig
) -> tuple[list[float], list[float]]:
    """Per-step KL and argmax agreement over all rows of `data` (teacher-forced tokens), averaged
    over predicted tokens."""
    was_training = head.training
    head.eval()
    sums_kl = [0.0] * cfg.chain_steps
    sums_ag = [0.0] * cfg.chain_steps
    totals = [0.0] * cfg.chain_steps
    for i in range(0, data.rows, cfg.rows_per_batch):
        b = data.select(
            torch.arange(i, min(i + cfg.rows_per_batch, data.rows), device=data.tokens.device)
        )
        with _autocast(b.tokens.device):
            _, kls, ags, counts = batch_loss(head, target, b, cfg)
        for k, (kl, ag, n) in enumerate(
            zip(kls.tolist(), ags.tolist(), counts.tolist(), strict=True)
        ):
            if n > 0:
                sums_kl[k] += kl * n
                sums_ag[k] += ag * n
                totals[k] += n
    head.train(was_training)
    nan = float("nan")
    return (
        [x / n if n else nan for x, n in zip(sums_kl, totals, strict=True)],
        [x / n if n else nan for x, n in zip(sums_ag, totals, strict=True)],
    )


def _autocast(device: torch.device):
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def _rounded(values: list[float]) -> list[float]:
    return [round(x, 3) for x in values]


def train(
    head: MTPHead, target: Transformer, data: Packed, val: Packed | None, cfg: TrainConfig
) -> History:
    """Train `head` (float32 master weights; bf16 autocast on CUDA) within cfg.time_budget_s."""
    device = data.tokens.device
    rng = random.Random(cfg.seed)
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    hist = History(config=asdict(cfg))

    def validate(step: int) -> None:
        vk, va = evaluate_loss(head, target, val, cfg)
        hist.val.append({"step": step, "kl": vk, "agree": va})
        log.info("val step %d  kl %s  agree %s", step, _rounded(vk), _rounded(va))

    t0 = time.monotonic()
    step = 0
    seen = torch.zeros((), dtype=torch.long, device=device)
    while step < cfg.max_steps:
        frac = (time.monotonic() - t0) / cfg.time_budget_s
        if frac > 1.0:
            log.info("time budget reached at step %d", step)
            break
        lr = _lr(step, frac, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        rows = torch.tensor(
            rng.sample(range(data.rows), min(cfg.rows_per_batch, data.rows)), device=device
        )
        b = data.select(rows)
        with _autocast(device):
            loss, kls, ags, _ = batch_loss(head, target, b, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        seen = seen + (b.doc >= 0).sum()
        if step % cfg.log_every == 0 or step == 1:
            kls, ags = kls.tolist(), ags.tolist()
            hist.train.append({"step": step, "kl": kls, "agree": ags, "lr": lr})
            log.info(
                "step %d  kl %s  agree %s  lr %.2e  %.0fs",
                step,
                [round(x, 3) for x in kls],
                [round(x, 3) for x in ags],
                lr,
                time.monotonic() - t0,
            )
        if val is not None and (step % cfg.val_every == 0):
            validate(step)
    hist.steps = step
    hist.seconds = time.monotonic() - t0
    hist.tokens_seen = int(seen)
    if val is not None and (not hist.val or hist.val[-1]["step"] != step):
        validate(step)
    head.eval()
    return hist
