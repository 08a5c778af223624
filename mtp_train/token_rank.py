"""Token frequencies of the target's own answers, for the engine's restricted draft vocabulary.

A draft head that scores only the K most frequent output ids (instead of all 49,152) is cheaper;
its acceptance depends on how much of the target's output those K ids cover. The asset
`refserver/assets/target_token_rank.safetensors` holds:

- `rank` int32 [V]: all token ids by descending count in the target's generated answers (ties
  by id), so `rank[:K]` is the top-K set;
- `count` int64 [V]: answer-token count of id i, indexed by id;

with metadata `format=specgate-token-rank-v1`, `answer_tokens`, `vocab_size`.

    python -m mtp_train.token_rank --data DIR --heldout-answers FILE --out PATH
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from mtp_train.generate import Sample

log = logging.getLogger(__name__)

FORMAT = "specgate-token-rank-v1"
COVERAGE_KS = (2048, 4096, 8192, 16384)


def answer_counts(samples: Iterable[Sample], vocab_size: int) -> np.ndarray:
    """count[i] = how often id i occurs in the samples' answers (prompt tokens excluded)."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for s in samples:
        ans = s.tokens[s.prompt_len :].cpu()
        if len(ans) and (int(ans.max()) >= vocab_size or int(ans.min()) < 0):
            raise ValueError(f"token id {int(ans.max())} outside vocab_size={vocab_size}")
        counts += torch.bincount(ans, minlength=vocab_size)
    return counts.numpy()


def rank_from_counts(counts: np.ndarray) -> np.ndarray:
    """All ids by descending count, ties broken by ascending id."""
    ids = np.arange(len(counts))
    return np.lexsort((ids, -counts.astype(np.int64))).astype(np.int32)


def coverage(rank: np.ndarray, counts: np.ndarray, ks: Iterable[int] = COVERAGE_KS) -> dict:
    """Fraction of the tokens counted in `counts` whose id is among the top k of `rank`."""
    total = int(counts.sum())
    if total == 0:
        raise ValueError("coverage of an empty count vector")
    return {int(k): float(counts[rank[:k]].sum()) / total for k in ks}


def save_rank(path: Path, counts: np.ndarray) -> np.ndarray:
    """Write the asset for `counts`; returns its rank."""
    from safetensors.torch import save_file

    rank = rank_from_counts(counts)
    meta = {
        "format": FORMAT,
        "answer_tokens": str(int(counts.sum())),
        "vocab_size": str(len(counts)),
    }
    save_file(
        {"rank": torch.from_numpy(rank), "count": torch.from_numpy(counts.astype(np.int64))},
        str(path),
        metadata=meta,
    )
    return rank


def load_rank(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(rank, count, metadata) of an asset written by `save_rank`; checks its format."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        rank, count = f.get_tensor("rank").numpy(), f.get_tensor("count").numpy()
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format={meta.get('format')!r}, expected {FORMAT!r}")
    return rank, count, meta


def main() -> None:
    from mtp_train.data import load_samples

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="token-id shards (data.py)")
    ap.add_argument("--heldout-answers", type=Path, default=None, help="shards of held-out answers")
    ap.add_argument("--vocab-size", type=int, default=49152)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    counts = answer_counts(load_samples(args.data), args.vocab_size)
    rank = save_rank(args.out, counts)
    report = {"answer_tokens": int(counts.sum()), "train_coverage": coverage(rank, counts)}
    if args.heldout_answers:
        held = answer_counts(load_samples(args.heldout_answers), args.vocab_size)
        report["heldout_answer_tokens"] = int(held.sum())
        report["heldout_coverage"] = coverage(rank, held)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
