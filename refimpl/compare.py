"""Run an implementation under test beside the oracle and describe every difference.

A report names the seed, the row and the field, shows expected against got with the row's
inputs, and ends with one command that reproduces the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from refimpl.batch import OUTPUT_FIELDS, TENSOR_FIELDS, Batch, HybridImpl
from refimpl.op import hybrid_mtp_ngram as oracle

MAX_ROWS_SHOWN = 4


@dataclass
class Mismatch:
    row: int | None  # None for a whole-tensor difference (shape, dtype, device)
    field: str
    expected: object
    got: object

    def __str__(self) -> str:
        where = f"row {self.row} " if self.row is not None else ""
        return f"{where}{self.field}: expected {self.expected}, got {self.got}"


def expected_outputs(batch: Batch) -> Batch:
    """The oracle's result on a copy of ``batch`` (moved to the CPU)."""
    result = batch.to("cpu").clone()
    result.run(oracle)
    return result


def run_impl(impl: HybridImpl, batch: Batch) -> Batch:
    result = batch.clone()
    result.run(impl)
    return result


def compare(batch: Batch, expected: Batch, got: Batch) -> list[Mismatch]:
    """Every row of every tensor that differs: the outputs, and inputs the impl must not touch."""
    mismatches: list[Mismatch] = []
    for name in TENSOR_FIELDS:
        want = getattr(expected, name)
        have = getattr(got, name)
        if have.shape != want.shape or have.dtype != want.dtype:
            mismatches.append(
                Mismatch(
                    None, name, f"{want.dtype}{list(want.shape)}", f"{have.dtype}{list(have.shape)}"
                )
            )
            continue
        have = have.cpu()
        field = name if name in OUTPUT_FIELDS else f"{name} (input, must not change)"
        differs = (have != want).reshape(want.shape[0], -1).any(dim=1)
        for b in torch.nonzero(differs).flatten().tolist():
            mismatches.append(Mismatch(b, field, _row_value(want, b), _row_value(have, b)))
    mismatches.sort(key=lambda m: (m.row if m.row is not None else -1, m.field))
    return mismatches


def check(impl: HybridImpl, batch: Batch) -> list[Mismatch]:
    """Run ``impl`` and the oracle on copies of ``batch``; return their differences."""
    expected = expected_outputs(batch)
    got = run_impl(impl, batch)
    return compare(batch, expected, got)


def report(
    batch: Batch,
    mismatches: list[Mismatch],
    impl_name: str,
    reproduce: str | None = None,
) -> str:
    """A failure message: the seed, the first few differing rows with their inputs, the command."""
    rows = sorted({m.row for m in mismatches if m.row is not None})
    lines = [
        f"{impl_name} differs from the oracle on {len(rows)} row(s) of a batch of "
        f"{batch.batch_size} (recipe={batch.recipe or '-'}, seed={batch.seed}, "
        f"scalars={batch.scalars()})"
    ]
    lines += [f"  {m}" for m in mismatches if m.row is None]
    for b in rows[:MAX_ROWS_SHOWN]:
        lines += [f"  {m}" for m in mismatches if m.row == b]
        lines.append("  inputs " + batch.row_summary(b).replace("\n", "\n  "))
    if len(rows) > MAX_ROWS_SHOWN:
        lines.append(f"  ... and {len(rows) - MAX_ROWS_SHOWN} more rows: {rows[MAX_ROWS_SHOWN:20]}")
    if reproduce:
        lines.append(f"reproduce: {reproduce}")
    return "\n".join(lines)


def _row_value(t: torch.Tensor, b: int) -> object:
    row = t[b]
    return row.item() if row.dim() == 0 else row.tolist()
