"""The sweep harness on CPU, tiny sizes: it checks outputs before timing and starts every call
from fresh inputs. Times are never asserted, only whether a point was timed at all."""

from __future__ import annotations

import pytest
import torch

from benchmarks import op_sweep
from benchmarks.op_sweep import ORI, Point, measure
from refimpl import impls

POINTS = [Point(4, 64, 32, pattern) for pattern in ("early", "late", "none", "threshold")]
ORACLE = impls.load(impls.ORACLE)
SEED = 15


def _gen() -> torch.Generator:
    print(f"seed={SEED}")
    return torch.Generator().manual_seed(SEED)


def off_by_one(*args, **kwargs) -> None:
    """The oracle, then one wrong token in the last row: what a subtly wrong kernel looks like."""
    ORACLE.fn(*args, **kwargs)
    draft, lens = args[5], args[6]
    draft[-1, int(lens[-1]) - 1] += 1


def raises(*args, **kwargs) -> None:
    raise ValueError("token_ids_all: not for this batch")


@pytest.mark.parametrize("point", POINTS, ids=str)
def test_a_wrong_impl_is_reported_and_not_timed(point):
    row = measure(point, impls.Impl("test:off_by_one", off_by_one), ORACLE, "cpu", _gen())
    assert row.impl_us is None, row  # a timing here means the equality check was skipped
    assert row.check.startswith("impl draft_tokens differs in 1/4 rows; row 3"), row.check
    assert row.base_us is not None  # the exact baseline is still timed
    line = op_sweep.fmt_row(row, copy_bw=1.0)
    assert "| — |" in line and "differs" in line


def test_a_wrong_baseline_is_reported_and_not_timed():
    row = measure(POINTS[0], ORACLE, impls.Impl("test:off_by_one", off_by_one), "cpu", _gen())
    assert row.impl_us is not None and row.base_us is None
    assert row.check.startswith("baseline draft_tokens differs"), row.check


def test_an_impl_that_raises_is_reported():
    row = measure(POINTS[0], impls.Impl("test:raises", raises), None, "cpu", _gen())
    assert row.impl_us is None
    assert row.check == "impl raised ValueError: token_ids_all: not for this batch"


def test_exact_impls_are_timed_from_fresh_inputs_every_call():
    seen: list[list[int]] = []

    def recording(*args, **kwargs):
        seen.append(args[6].tolist())  # seq_lens_this_time as this call receives it
        ORACLE.fn(*args, **kwargs)

    for point in POINTS:
        seen.clear()
        row = measure(point, impls.Impl("test:recording", recording), ORACLE, "cpu", _gen())
        assert row.check == "ok vs oracle", row.check
        assert row.impl_us is not None and row.base_us is not None
        assert len(seen) >= 1 + 5  # the check, then the timed calls
        # Every call, checked or timed, starts from the lens the inputs were created with (the
        # graph_time_us trap of issue 15: a second timing saw rows already extended).
        assert all(lens == [ORI] * point.batch for lens in seen), seen


def test_bench_op_fails_a_wrong_impl_before_timing():
    from benchmarks.bench_op import checked

    point = POINTS[0]
    inp = op_sweep.make_inputs(point, "cpu", _gen())
    ref_name, want = op_sweep.reference(point, inp)
    checked("the oracle", ORACLE.fn, inp, ref_name, want)  # the same outputs pass
    with pytest.raises(pytest.fail.Exception, match="off-by-one differs from the oracle"):
        checked("off-by-one", off_by_one, inp, ref_name, want)
