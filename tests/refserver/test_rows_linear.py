"""refserver's float32 rows kernel (`refserver.rows_linear`): exact to float32 rounding, rows
independent of each other and of the thread count, bad input refused by name.

The kernel must build wherever there is a C++ compiler (a failed build fails here, with the
compiler's message); only a CPU without AVX2/FMA (or not x86-64) skips, with the reason.
"""

from __future__ import annotations

import random

import pytest
import torch

from refserver import rows_linear as rl

SEED = 20261201


@pytest.fixture(scope="module", autouse=True)
def _kernel_runs_here():
    reason = rl.unavailable_reason()
    if reason is None:
        return
    result = rl.build_library()
    if not result.ok and "no C++ compiler" not in result.detail:
        pytest.fail(f"refserver's rows kernel did not build: {result.detail}")
    pytest.skip(f"refserver's rows kernel cannot run here: {reason}")


def _reference(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x @ w.T in float64, and the scale of its rounding error (|x| @ |w|.T)."""
    return x.double() @ w.double().T, x.double().abs() @ w.double().abs().T


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 32])
@pytest.mark.parametrize("n, k", [(576, 576), (960, 576), (576, 1536), (37, 16), (100, 48)])
def test_equals_float64_to_float32_rounding(rows, n, k):
    """Every row count's pass shapes (1..6 rows, several passes), weight tails (N not a multiple
    of the 32-row block or of a tile), short and long K."""
    seed = SEED + 1000 * rows + n + k
    print(f"seed {seed}")
    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    got = rl.rows_linear(x, w)
    want, scale = _reference(x, w)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    err = ((got.double() - want).abs() / scale).max().item()
    # 8 lanes of k/8 fused multiply-adds and a 3-level tree: well under 100 float32 ulps of scale
    assert err < 100 * torch.finfo(torch.float32).eps, f"relative error {err:.3g} (seed {seed})"


def test_a_row_does_not_depend_on_the_others_or_the_threads():
    """Bit for bit: each row alone equals the same row in a call of 1..13 rows (so a verified
    token gets the bits a one-token step would give it), with 1 and 2 threads."""
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    gen = torch.Generator().manual_seed(SEED)
    w = torch.randn(961, 576, generator=gen)
    x = torch.randn(13, 576, generator=gen)
    alone = torch.cat([rl.rows_linear(x[i : i + 1], w) for i in range(13)])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for rows in rng.sample(range(1, 14), 6) + [13]:
                batch = rl.rows_linear(x[:rows], w)
                assert torch.equal(batch, alone[:rows]), f"rows={rows} threads={threads}"
    finally:
        torch.set_num_threads(before)


def test_leading_dims_and_strided_x():
    gen = torch.Generator().manual_seed(SEED)
    w = torch.randn(64, 32, generator=gen)
    x = torch.randn(2, 3, 64, generator=gen)[..., ::2]  # [2, 3, 32], not contiguous
    got = rl.rows_linear(x, w)
    assert got.shape == (2, 3, 64)
    assert torch.equal(got, rl.rows_linear(x.contiguous(), w))
    torch.testing.assert_close(got, x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x, w, match",
    [
        (torch.ones(2, 32, dtype=torch.float64), torch.ones(8, 32), "x must be float32"),
        (torch.ones(2, 32), torch.ones(8, 32, dtype=torch.bfloat16), "weight must be"),
        (torch.ones(2, 24), torch.ones(8, 24), r"K a multiple of 16.*\(8, 24\)"),
        (torch.ones(2, 32), torch.ones(32, 8).T, "contiguous"),
        (torch.ones(2, 16), torch.ones(8, 32), r"x \(2, 16\) does not end in the weight's K = 32"),
        (torch.tensor(1.0), torch.ones(8, 32), "does not end in"),
    ],
)
def test_bad_input_is_refused_by_name(x, w, match):
    with pytest.raises((TypeError, ValueError), match=match):
        rl.rows_linear(x, w)
