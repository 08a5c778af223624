"""Draft verification: greedy prefix rule and lossless speculative sampling with point masses."""

from __future__ import annotations

import pytest
import torch

from refserver.sampling import target_probs, verify_greedy, verify_sampling


@pytest.mark.parametrize(
    ("argmax", "drafts", "accepted", "emitted"),
    [
        ([5], [], 0, [5]),
        ([1, 2, 3, 4], [1, 2, 3], 3, [1, 2, 3, 4]),  # all accepted + bonus
        ([1, 9, 3, 4], [1, 2, 3], 1, [1, 9]),  # the first mismatch stops, even if later ones match
        ([7, 2, 3, 4], [1, 2, 3], 0, [7]),
    ],
)
def test_verify_greedy(argmax, drafts, accepted, emitted):
    assert verify_greedy(argmax, drafts) == (accepted, emitted)


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = target_probs(logits, 1.0, 0.7)
    torch.testing.assert_close(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert target_probs(logits, 1.0, 0.01)[0].tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("top_p", [1e-46, 5e-324])
def test_top_p_that_rounds_to_zero_in_float32_keeps_the_top_token(top_p):
    """Issue 10: a positive top_p below float32's smallest subnormal once masked every token,
    and sampling from 0/0 raised inside the engine."""
    assert torch.tensor(top_p, dtype=torch.float32).item() == 0.0
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    p = target_probs(logits, 1.0, top_p)
    assert p[0].tolist() == [0.0, 1.0, 0.0]
    assert verify_sampling(p, [], torch.Generator().manual_seed(0)) == (0, [1])


def test_speculative_sampling_is_lossless():
    """With any point-mass draft, the first emitted token is distributed exactly as p."""
    seed = 1234
    print(f"seed {seed}")
    p = torch.tensor([0.1, 0.6, 0.25, 0.05])
    probs = torch.stack([p, p])
    gen = torch.Generator().manual_seed(seed)
    n = 20000
    for draft in (1, 2, 3):
        counts = torch.zeros(4)
        for _ in range(n):
            _, emitted = verify_sampling(probs, [draft], gen)
            counts[emitted[0]] += 1
        freq = counts / n
        # 4 standard deviations of a binomial frequency at n=20000 is < 0.015.
        assert torch.allclose(freq, p, atol=0.015), (draft, freq.tolist())


def test_speculative_sampling_reproducible_and_accepts_sure_drafts():
    probs = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    a = verify_sampling(probs, [1], torch.Generator().manual_seed(7))
    b = verify_sampling(probs, [1], torch.Generator().manual_seed(7))
    assert a == b and a[0] == 1  # p(draft) = 1 is always accepted
    # p(draft) = 0 is always rejected and never re-sampled.
    acc, emitted = verify_sampling(
        torch.tensor([[0.5, 0.0, 0.5]]).repeat(2, 1), [1], torch.Generator()
    )
    assert acc == 0 and emitted[0] in (0, 2)
