"""One command: generate the target's answers -> train the MTP head -> evaluate -> save.

This is what ran on the GPU machine (see refserver/MTP_CARD.md for the exact commands):

    python -m mtp_train.pipeline --gguf /root/smollm.gguf \
        --prompts .carry/mtp/train_prompts.jsonl --out $OUT [--init-head H] [--save-data D]

Writes to --out: mtp_head.safetensors, metrics.json, train_log.txt, target_token_rank.safetensors
(answer-token frequencies, see token_rank.py) and heldout/data-000.npz (the held-out greedy
answers as token ids, for coverage numbers only). --save-data D keeps the generated answers as
token ids; --load-data D trains on such ids again instead of generating (hidden states are
recomputed). A CPU smoke test of the whole path (tiny sizes, a few steps): add --tiny.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mtp_train.data import load_samples, save_samples
from mtp_train.evaluate import acceptance, acceptance_by_group
from mtp_train.generate import GenConfig, Sample, generate, recompute_hidden
from mtp_train.prompts import derived_prompts
from mtp_train.token_rank import answer_counts, coverage, save_rank
from mtp_train.train_head import TrainConfig, evaluate_loss, pack, train
from refserver.heldout import HELDOUT_PATH
from refserver.model import load_model
from refserver.mtp_head import MTPHead

log = logging.getLogger("mtp_train.pipeline")


def _read_jsonl(path: Path) -> list[dict]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _tokenize(tok, prompts: list[dict]) -> list[list[int]]:
    return [tok.encode(tok.apply_chat_template(p["messages"])) for p in prompts]


def _derived_ids(
    tok,
    samples: list[Sample],
    kinds: list[str],
    max_prompt_tokens: int,
    banned: set[tuple[int, ...]],
    seed: int,
) -> list[list[int]]:
    """Token ids of the derived prompts built from `samples`' answers (kinds[s.index] is the
    kind of the prompt each answered)."""
    answers = [(kinds[s.index], tok.decode(s.tokens[s.prompt_len :].tolist())) for s in samples]
    derived = derived_prompts(answers, seed=seed)
    ids = [x for x in _tokenize(tok, derived) if len(x) <= max_prompt_tokens]
    return [x for x in ids if tuple(x) not in banned]


def _generate_passes(
    args: argparse.Namespace,
    target,
    tok,
    train_prompts: list[dict],
    keep: list[int],
    train_ids: list[list[int]],
    banned: set[tuple[int, ...]],
) -> tuple[list[Sample], list[dict], list[str], int]:
    """Pass 0 answers every prompt (mostly greedy). Pass 1 answers "derived" prompts built from
    pass 0's own answers (edit this paragraph / this code), for general-English rewriting data.
    Later passes answer the original prompts again, sampled, while the budget lasts."""
    stop_ids = set(tok.stop_ids)
    t0 = time.monotonic()
    samples: list[Sample] = []
    gcfgs: list[dict] = []
    passes: list[str] = []
    derived_count = 0
    for gen_pass in range(args.gen_passes):
        left = args.gen_budget - (time.monotonic() - t0)
        if left <= 0:
            break
        if gen_pass == 1:
            ids = _derived_ids(
                tok,
                samples,
                [train_prompts[i]["kind"] for i in keep],
                args.max_prompt_tokens,
                banned,
                args.seed,
            )
            derived_count = len(ids)
        else:
            order = list(range(len(train_ids)))
            random.Random(args.seed + gen_pass).shuffle(order)
            ids = [train_ids[i] for i in order]
        gcfg = GenConfig(
            batch_size=args.batch,
            max_new_tokens=args.max_new,
            sample_fraction=args.sample_fraction if gen_pass < 2 else 1.0,
            temperature=args.temperature,
            seed=args.seed + gen_pass,
            time_budget_s=left,
        )
        gcfgs.append(asdict(gcfg))
        if gen_pass == 0:
            # keep[] maps pass-0 indices back to train_prompts (for the derived prompts' kinds)
            keep = [keep[i] for i in order]
        new = generate(target, ids, stop_ids, gcfg)
        for s in new:
            s.source = gen_pass
        passes.append(
            f"pass {gen_pass}: {len(ids)} prompts, {len(new)} answered, "
            f"{sum(len(x.tokens) - x.prompt_len for x in new)} answer tokens"
        )
        log.info(passes[-1])
        samples += new
    return samples, gcfgs, passes, derived_count


def _initial_head(args: argparse.Namespace, target) -> MTPHead:
    """A fresh head, or (--init-head) saved weights to continue from, as float32 trainables."""
    if args.init_head is None:
        head = MTPHead.from_target(target, seed=args.seed)
    else:
        head = MTPHead.load(args.init_head, target).requires_grad_(True)
        log.info("warm start from %s", args.init_head)
    return head.placed_like(target, torch.float32)


def _heldout_report(
    head: MTPHead, held: list[Sample], kinds: list[str], steps: int, max_new: int
) -> dict:
    """Acceptance on the held-out greedy answers cut at `max_new` tokens, overall and per kind."""
    cut = [s.truncated(max_new) for s in held]
    by_kind = acceptance_by_group(head, cut, kinds, steps=steps)
    return {
        "max_new_tokens": max_new,
        "answer_tokens": sum(len(s.tokens) - s.prompt_len for s in cut),
        "acceptance": by_kind.pop("all").as_dict(),
        "acceptance_per_kind": {k: v.as_dict() for k, v in by_kind.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--prompts", type=Path, default=None, help="training prompts (prompts.py)")
    ap.add_argument("--heldout", type=Path, default=HELDOUT_PATH)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--init-head", type=Path, default=None, help="warm start from these weights")
    ap.add_argument("--save-data", type=Path, default=None, help="keep answers as token ids here")
    ap.add_argument(
        "--load-data", type=Path, default=None, help="train on these ids, no generation"
    )
    ap.add_argument("--max-prompts", type=int, default=0, help="0 = all")
    ap.add_argument("--max-prompt-tokens", type=int, default=400)
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--max-new", type=int, default=320)
    ap.add_argument("--sample-fraction", type=float, default=0.25, help="in passes 0 and 1")
    ap.add_argument("--temperature", type=float, default=0.8, help="of sampled answers")
    ap.add_argument("--gen-passes", type=int, default=3)
    ap.add_argument("--gen-budget", type=float, default=150.0, help="seconds")
    ap.add_argument("--train-budget", type=float, default=240.0, help="seconds")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--row-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--chain-steps", type=int, default=3)
    ap.add_argument("--val-fraction", type=float, default=0.03)
    ap.add_argument("--eval-max-new", type=int, nargs="+", default=[256, 96])
    ap.add_argument("--eval-steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test sizes")
    args = ap.parse_args()
    if args.tiny:
        args.max_prompts, args.batch, args.max_new, args.gen_passes = 6, 6, 60, 3
        args.gen_budget, args.train_budget, args.rows, args.row_len = 60, 4, 2, 512
        args.eval_max_new, args.warmup_steps = [10, 5], 2
    if (args.prompts is None) == (args.load_data is None):
        ap.error("give exactly one of --prompts (generate) and --load-data (reuse token ids)")

    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "train_log.txt")],
    )
    t_start = time.monotonic()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    target, tok = load_model(args.gguf, dtype=dtype, device=device)
    stop_ids = set(tok.stop_ids)
    log.info(
        "target loaded in %.1fs on %s (%s)",
        time.monotonic() - t_start,
        device,
        torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    )

    # ---- data -------------------------------------------------------------------------------
    heldout = _read_jsonl(args.heldout)
    heldout_ids = _tokenize(tok, heldout)
    banned = {tuple(h) for h in heldout_ids}
    t0 = time.monotonic()
    gcfgs: list[dict] = []
    if args.load_data is not None:
        samples = load_samples(args.load_data)
        clash = sum(tuple(s.tokens[: s.prompt_len].tolist()) in banned for s in samples)
        if clash:
            raise ValueError(f"--load-data {args.load_data}: {clash} samples have held-out prompts")
        samples = recompute_hidden(target, samples)
        passes, derived_count = [f"loaded from {args.load_data}"], 0
    else:
        train_prompts = _read_jsonl(args.prompts)
        if args.max_prompts:
            train_prompts = train_prompts[: args.max_prompts]
        train_ids = _tokenize(tok, train_prompts)
        keep = [
            i
            for i, ids in enumerate(train_ids)
            if len(ids) <= args.max_prompt_tokens and tuple(ids) not in banned
        ]
        log.info(
            "training prompts: %d read, %d kept (<= %d tokens, not held out)",
            len(train_ids),
            len(keep),
            args.max_prompt_tokens,
        )
        train_ids = [train_ids[i] for i in keep]
        samples, gcfgs, passes, derived_count = _generate_passes(
            args, target, tok, train_prompts, keep, train_ids, banned
        )
    data_s = time.monotonic() - t0
    if args.save_data is not None:
        save_samples(samples, args.save_data)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    n_prompt = sum(s.prompt_len for s in samples)
    n_answer = sum(len(s.tokens) - s.prompt_len for s in samples)
    data_stats = {
        "prompts": len(samples),
        "greedy_samples": sum(s.greedy for s in samples),
        "prompt_tokens": n_prompt,
        "answer_tokens": n_answer,
        "answer_tokens_per_source": {
            str(src): sum(len(s.tokens) - s.prompt_len for s in samples if s.source == src)
            for src in sorted({s.source for s in samples})
        },
        "derived_prompts": derived_count,
        "passes": passes,
        "data_seconds": round(data_s, 1),
    }
    log.info("data: %s", data_stats)
    for s in samples[:2]:
        log.info("example answer: %r", tok.decode(s.tokens[s.prompt_len :].tolist())[:300])

    # Answer-token frequencies for the engine's restricted draft vocabulary (all passes).
    counts = answer_counts(samples, target.config.vocab_size)
    rank = save_rank(args.out / "target_token_rank.safetensors", counts)
    log.info("token rank: %d answer tokens, coverage %s", counts.sum(), coverage(rank, counts))

    rng = random.Random(args.seed)
    rng.shuffle(samples)
    n_val = max(1, int(len(samples) * args.val_fraction))
    val_samples, train_samples = samples[:n_val], samples[n_val:]
    tcfg = TrainConfig(
        chain_steps=args.chain_steps,
        rows_per_batch=args.rows,
        row_len=args.row_len,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        time_budget_s=args.train_budget,
        seed=args.seed,
    )
    if args.tiny:
        tcfg = replace(tcfg, val_every=2, log_every=1)
    train_data = pack(train_samples, tcfg.row_len, device)
    val_data = pack(val_samples, tcfg.row_len, device)
    del samples, train_samples

    # ---- train ------------------------------------------------------------------------------
    head = _initial_head(args, target)
    hist = train(head, target, train_data, val_data, tcfg)
    weights = args.out / "mtp_head.safetensors"
    head.save(weights)
    del train_data
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- evaluate on the held-out prompts, with the saved (bf16) weights ---------------------
    head = MTPHead.load(weights, target)
    t0 = time.monotonic()
    held = generate(
        target,
        heldout_ids,
        stop_ids,
        GenConfig(batch_size=len(heldout_ids), max_new_tokens=max(args.eval_max_new)),
    )
    save_samples(held, args.out / "heldout")
    held_counts = answer_counts(held, target.config.vocab_size)
    kinds = [h["kind"] for h in heldout]
    reports = [_heldout_report(head, held, kinds, args.eval_steps, m) for m in args.eval_max_new]
    held_packed = pack(held, max(len(s.tokens) for s in held), device)
    held_kl, held_agree = evaluate_loss(
        head.placed_like(target, torch.float32),
        target,
        held_packed,
        replace(tcfg, rows_per_batch=8),
    )
    val_greedy = [s for s in val_samples if s.greedy][:48]
    acc_val = (
        acceptance(head.placed_like(target), val_greedy, steps=args.eval_steps)
        if val_greedy
        else None
    )
    for r in reports:
        log.info("held-out acceptance (<= %d new tokens): %s", r["max_new_tokens"], r["acceptance"])
        log.info("held-out per kind: %s", r["acceptance_per_kind"])
    log.info("held-out teacher-forced KL %s agree %s", held_kl, held_agree)
    if acc_val:
        log.info("val (training distribution, greedy) acceptance: %s", acc_val.as_dict())

    metrics = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "data": data_stats,
        "gen_configs": gcfgs,
        "token_rank": {
            "answer_tokens": int(counts.sum()),
            "train_coverage": coverage(rank, counts),
            "heldout_answer_tokens": int(held_counts.sum()),
            "heldout_coverage": coverage(rank, held_counts),
        },
        "train": asdict(hist),
        "heldout": {
            "prompts": len(held),
            "reports": reports,
            "teacher_forced_kl": held_kl,
            "teacher_forced_agree": held_agree,
            "eval_seconds": round(time.monotonic() - t0, 1),
        },
        "val_greedy_acceptance": acc_val.as_dict() if acc_val else None,
        "total_seconds": round(time.monotonic() - t_start, 1),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info(
        "done in %.0fs; weights %s (%d bytes)",
        metrics["total_seconds"],
        weights,
        weights.stat().st_size,
    )


if __name__ == "__main__":
    main()
