"""Training data stored as token ids only (no hidden states), in shards small enough to travel.

The frozen target recomputes the hidden states from the ids (`generate.recompute_hidden`), so a
later run can train again on the same answers without generating them. One shard is an `.npz`:

- `tokens` uint16: every sample's prompt + answer ids, concatenated (SmolLM2's vocabulary has
  49,152 ids, so uint16 holds them all; a larger vocabulary is refused);
- `lengths`, `prompt_lens` int32, `greedy` bool, `source` int8: one entry per sample.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from mtp_train.generate import Sample

log = logging.getLogger(__name__)

SHARD_PATTERN = "data-{:03d}.npz"
MAX_SHARD_TOKENS = 7_500_000  # 15 MB of uint16: under the 16 MiB a device file may have


def save_samples(samples: list[Sample], out_dir: Path, max_shard_tokens: int = MAX_SHARD_TOKENS):
    """Write `samples` (in order) as token-id shards into `out_dir`; returns the shard paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    shard: list[Sample] = []
    used = 0

    def flush() -> None:
        nonlocal shard, used
        if not shard:
            return
        toks = torch.cat([s.tokens.cpu() for s in shard])
        if int(toks.max()) > np.iinfo(np.uint16).max or int(toks.min()) < 0:
            raise ValueError(f"token id {int(toks.max())} does not fit the uint16 shard format")
        path = out_dir / SHARD_PATTERN.format(len(paths))
        np.savez(
            path,
            tokens=toks.numpy().astype(np.uint16),
            lengths=np.array([len(s.tokens) for s in shard], dtype=np.int32),
            prompt_lens=np.array([s.prompt_len for s in shard], dtype=np.int32),
            greedy=np.array([s.greedy for s in shard], dtype=bool),
            source=np.array([s.source for s in shard], dtype=np.int8),
        )
        paths.append(path)
        shard, used = [], 0

    for s in samples:
        if shard and used + len(s.tokens) > max_shard_tokens:
            flush()
        shard.append(s)
        used += len(s.tokens)
    flush()
    log.info("saved %d samples in %d shards under %s", len(samples), len(paths), out_dir)
    return paths


def load_samples(data_dir: Path) -> list[Sample]:
    """Read every shard under `data_dir` (in shard order) as Samples without hidden states."""
    paths = sorted(data_dir.glob("data-*.npz"))
    if not paths:
        raise FileNotFoundError(f"--load-data {data_dir}: no data-*.npz shards there")
    samples: list[Sample] = []
    for path in paths:
        with np.load(path) as z:
            toks = torch.from_numpy(z["tokens"].astype(np.int64))
            lengths = z["lengths"].tolist()
            meta = zip(
                z["prompt_lens"].tolist(), z["greedy"].tolist(), z["source"].tolist(), strict=True
            )
        if sum(lengths) != len(toks):
            raise ValueError(
                f"{path}: lengths sum to {sum(lengths)}, but {len(toks)} tokens stored"
            )
        for t, (p, g, src) in zip(torch.split(toks, lengths), meta, strict=True):
            samples.append(Sample(t, None, p, bool(g), len(samples), src))
    log.info("loaded %d samples from %d shards under %s", len(samples), len(paths), data_dir)
    return samples
