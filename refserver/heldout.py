"""The held-out chat prompts: never trained on, so the lossless check, the benchmarks and the MTP
head's evaluation measure what a user would see. `assets/prompts/README.md` describes the set."""

from __future__ import annotations

import json
from pathlib import Path

HELDOUT_PATH = Path(__file__).parent / "assets" / "prompts" / "heldout.jsonl"


def heldout_prompts(path: Path = HELDOUT_PATH) -> list[dict]:
    """Every record ({"id", "kind", "messages"}), in file order."""
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def heldout_user_texts(path: Path = HELDOUT_PATH) -> list[str]:
    """The user turns' contents: what training prompts must never overlap."""
    return [
        m["content"] for r in heldout_prompts(path) for m in r["messages"] if m["role"] == "user"
    ]
