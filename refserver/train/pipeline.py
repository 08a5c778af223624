"""One command: generate the target's answers -> train the MTP head -> evaluate -> save.

This is what ran on the GPU machine (see refserver/MTP_CARD.md for the exact command):

    python -m refserver.train.pipeline --gguf /root/smollm.gguf \
        --prompts .carry/mtp/train_prompts.jsonl --out $OUT

Writes to --out: mtp_head.safetensors, metrics.json, train_log.txt.
A CPU smoke test of the whole path (tiny sizes, a few steps): add --tiny.
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

from refserver.model import load_model
from refserver.mtp_head import MTPHead
from refserver.train.evaluate import acceptance, acceptance_by_group
from refserver.train.generate import GenConfig, Sample, generate
from refserver.train.prompts import HELDOUT_PATH, derived_prompts
from refserver.train.train_head import TrainConfig, evaluate_loss, pack, train

log = logging.getLogger("refserver.train.pipeline")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--prompts", type=Path, required=True, help="training prompts (prompts.py)")
    ap.add_argument("--heldout", type=Path, default=HELDOUT_PATH)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-prompts", type=int, default=0, help="0 = all")
    ap.add_argument("--max-prompt-tokens", type=int, default=400)
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--max-new", type=int, default=320)
    ap.add_argument("--sample-fraction", type=float, default=0.25, help="in the first pass")
    ap.add_argument("--gen-passes", type=int, default=3)
    ap.add_argument("--gen-budget", type=float, default=150.0, help="seconds")
    ap.add_argument("--train-budget", type=float, default=240.0, help="seconds")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--row-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--chain-steps", type=int, default=3)
    ap.add_argument("--val-fraction", type=float, default=0.03)
    ap.add_argument("--eval-max-new", type=int, default=256)
    ap.add_argument("--eval-steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test sizes")
    args = ap.parse_args()
    if args.tiny:
        args.max_prompts, args.batch, args.max_new, args.gen_passes = 6, 6, 60, 3
        args.gen_budget, args.train_budget, args.rows, args.row_len = 60, 4, 2, 512
        args.eval_max_new = 10

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
    train_prompts = _read_jsonl(args.prompts)
    if args.max_prompts:
        train_prompts = train_prompts[: args.max_prompts]
    train_ids = _tokenize(tok, train_prompts)
    banned = {tuple(h) for h in heldout_ids}
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

    # Pass 0 answers every prompt (mostly greedy). Pass 1 answers "derived" prompts built from
    # pass 0's own answers (edit this paragraph / this code), for general-English rewriting
    # data. Later passes answer the original prompts again, sampled, while the budget lasts.
    t0 = time.monotonic()
    samples: list[Sample] = []
    gcfgs = []
    derived_count = 0
    kinds_by_pass: list[str] = []
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
            temperature=0.8 if gen_pass < 2 else 0.9,
            seed=args.seed + gen_pass,
            time_budget_s=left,
        )
        gcfgs.append(asdict(gcfg))
        if gen_pass == 0:
            # keep[] maps pass-0 indices back to train_prompts (for the derived prompts' kinds)
            keep = [keep[i] for i in order]
        new = generate(target, ids, stop_ids, gcfg)
        kinds_by_pass.append(
            f"pass {gen_pass}: {len(ids)} prompts, {len(new)} answered, "
            f"{sum(len(x.tokens) - x.prompt_len for x in new)} answer tokens"
        )
        log.info(kinds_by_pass[-1])
        samples += new
    gen_s = time.monotonic() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()
    n_prompt = sum(s.prompt_len for s in samples)
    n_answer = sum(len(s.tokens) - s.prompt_len for s in samples)
    data_stats = {
        "prompts": len(samples),
        "greedy_samples": sum(s.greedy for s in samples),
        "prompt_tokens": n_prompt,
        "answer_tokens": n_answer,
        "derived_prompts": derived_count,
        "passes": kinds_by_pass,
        "generation_seconds": round(gen_s, 1),
        "answer_tokens_per_second": round(n_answer / gen_s, 1),
    }
    log.info("data: %s", data_stats)
    for s in samples[:2]:
        log.info("example answer: %r", tok.decode(s.tokens[s.prompt_len :].tolist())[:300])

    rng = random.Random(args.seed)
    rng.shuffle(samples)
    n_val = max(1, int(len(samples) * args.val_fraction))
    val_samples, train_samples = samples[:n_val], samples[n_val:]
    tcfg = TrainConfig(
        chain_steps=args.chain_steps,
        rows_per_batch=args.rows,
        row_len=args.row_len,
        lr=args.lr,
        time_budget_s=args.train_budget,
        seed=args.seed,
    )
    if args.tiny:
        tcfg = replace(tcfg, warmup_steps=2, val_every=2, log_every=1)
    train_data = pack(train_samples, tcfg.row_len, device)
    val_data = pack(val_samples, tcfg.row_len, device)
    del samples, train_samples

    # ---- train ------------------------------------------------------------------------------
    head = MTPHead.from_target(target, seed=args.seed).placed_like(target, torch.float32)
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
        GenConfig(batch_size=len(heldout_ids), max_new_tokens=args.eval_max_new),
    )
    kinds = [h["kind"] for h in heldout]
    by_kind = acceptance_by_group(head, held, kinds, steps=args.eval_steps)
    acc_all = by_kind.pop("all")
    per_kind = {k: v.as_dict() for k, v in by_kind.items()}
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
    log.info("held-out acceptance: %s", acc_all.as_dict())
    log.info("held-out per kind: %s", per_kind)
    log.info("held-out teacher-forced KL %s agree %s", held_kl, held_agree)
    if acc_val:
        log.info("val (training distribution, greedy) acceptance: %s", acc_val.as_dict())

    metrics = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "data": data_stats,
        "gen_configs": gcfgs,
        "train": asdict(hist),
        "heldout": {
            "prompts": len(held),
            "answer_tokens": sum(len(s.tokens) - s.prompt_len for s in held),
            "acceptance": acc_all.as_dict(),
            "acceptance_per_kind": per_kind,
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
