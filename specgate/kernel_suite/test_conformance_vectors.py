"""The implementation under test (and the oracle itself) on the hand-checked named vectors."""

from __future__ import annotations

import pytest
import torch

from refimpl import hybrid_mtp_ngram as oracle
from refimpl.vectors import load_vectors

VECTORS = load_vectors()


def _run(fn, vector, device):
    batch = vector.batch.clone().to(device)
    batch.run(fn)
    return batch.draft_tokens.cpu(), batch.seq_lens_this_time.cpu()


def _explain(vector, got_drafts, got_lens) -> str:
    return (
        f"vector {vector.name!r} ({vector.rule})\n"
        f"  expected seq_lens_this_time {vector.expected_seq_lens_this_time.tolist()}, "
        f"got {got_lens.tolist()}\n"
        f"  expected draft_tokens {vector.expected_draft_tokens.tolist()}\n"
        f"       got draft_tokens {got_drafts.tolist()}\n"
        f"  why: {vector.why.strip()}"
    )


@pytest.mark.kernel
@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector(vector, impl, kernel_device, reproduce, request):
    drafts, lens = _run(impl.fn, vector, kernel_device)
    ok = torch.equal(drafts, vector.expected_draft_tokens) and torch.equal(
        lens, vector.expected_seq_lens_this_time
    )
    assert ok, (
        f"{impl.name}: {_explain(vector, drafts, lens)}\nreproduce: {reproduce(request.node)}"
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_oracle_agrees_with_hand_checked_vector(vector):
    """The vectors were derived by hand from the SPEC; the oracle must reproduce every one."""
    drafts, lens = _run(oracle, vector, "cpu")
    ok = torch.equal(drafts, vector.expected_draft_tokens) and torch.equal(
        lens, vector.expected_seq_lens_this_time
    )
    assert ok, "oracle: " + _explain(vector, drafts, lens)
