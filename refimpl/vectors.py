"""Load the named conformance vectors (refimpl/vectors.yaml) as Batches with expected outputs.

Each case pins one SPEC rule. Any implementation, in any framework, can be run against the
YAML through a few lines like ``run_case`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from refimpl.batch import Batch

VECTORS_PATH = Path(__file__).with_name("vectors.yaml")
INPUTS = {
    "token_ids_all": torch.int64,
    "prompt_lens": torch.int64,
    "pre_ids": torch.int64,
    "step_idx": torch.int64,
    "draft_tokens": torch.int64,
    "seq_lens_this_time": torch.int32,
    "seq_lens_decoder": torch.int32,
    "max_dec_len": torch.int64,
}
COLUMN_ARGS = ("prompt_lens", "step_idx", "max_dec_len")
SCALARS = ("max_ngram_size", "min_ngram_size", "max_draft_tokens", "threshold", "pad_to_max")


@dataclass
class Vector:
    name: str
    rule: str
    why: str
    batch: Batch
    expected_draft_tokens: torch.Tensor
    expected_seq_lens_this_time: torch.Tensor


class VectorFileError(ValueError):
    """A malformed vectors file; the message names the file, the case and the key."""


def load_vectors(path: Path = VECTORS_PATH) -> list[Vector]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise VectorFileError(f"{path}: expected a mapping with a list under 'cases'")
    vectors, seen = [], set()
    for i, case in enumerate(doc["cases"]):
        where = f"{path}: cases[{i}]"
        if not isinstance(case, dict):
            raise VectorFileError(f"{where}: expected a mapping, got {type(case).__name__}")
        name = _need(case, "name", str, where)
        where = f"{path}: case {name!r}"
        if name in seen:
            raise VectorFileError(f"{where}: duplicate name")
        seen.add(name)
        vectors.append(_vector(case, name, where))
    return vectors


def _need(mapping: dict, key: str, kind: type, where: str):
    if key not in mapping:
        raise VectorFileError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise VectorFileError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _vector(case: dict, name: str, where: str) -> Vector:
    args = _need(case, "args", dict, where)
    inputs = _need(case, "inputs", dict, where)
    expected = _need(case, "expected", dict, where)
    column = bool(case.get("column_shapes", False))
    tensors = {}
    for key, dtype in INPUTS.items():
        try:
            t = torch.tensor(_need(inputs, key, list, f"{where} inputs"), dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise VectorFileError(
                f"{where}: inputs.{key} is not a rectangular int list: {exc}"
            ) from exc
        tensors[key] = t.unsqueeze(1) if column and key in COLUMN_ARGS else t
    for key in ("max_ngram_size", "min_ngram_size", "max_draft_tokens"):
        _need(args, key, int, f"{where} args")
    batch = Batch(
        **tensors,
        draft_token_num=tensors["seq_lens_this_time"].clone(),
        max_ngram_size=args["max_ngram_size"],
        min_ngram_size=args["min_ngram_size"],
        max_draft_tokens=args["max_draft_tokens"],
        threshold=int(args.get("threshold", 1024)),
        pad_to_max=bool(args.get("pad_to_max", False)),
        recipe=f"vector:{name}",
    )
    return Vector(
        name=name,
        rule=str(case.get("rule", "")),
        why=str(case.get("why", "")),
        batch=batch,
        expected_draft_tokens=torch.tensor(
            _need(expected, "draft_tokens", list, f"{where} expected"), dtype=torch.int64
        ),
        expected_seq_lens_this_time=torch.tensor(
            _need(expected, "seq_lens_this_time", list, f"{where} expected"), dtype=torch.int32
        ),
    )
