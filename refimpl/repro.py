"""Reproduce one random kernel-suite batch: ``python -m refimpl.repro --impl M:F --recipe R --seed S``.

Prints the batch's scalars and, if the implementation differs from the oracle, the full report
with every differing row. Exit status 1 on a difference, 0 when they agree.
"""

from __future__ import annotations

import argparse
import sys

from refimpl import RECIPES, check, generate, impls, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl.repro", description=__doc__)
    parser.add_argument(
        "--impl", default=None, help="module:function (default: the op, else the oracle)"
    )
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    parser.add_argument(
        "--seed", required=True, type=int, help="the batch seed printed by the suite"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)

    try:
        impl = impls.load(args.impl) if args.impl else impls.default(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    batch = generate(args.recipe, args.seed)
    print(f"batch: recipe={args.recipe} seed={args.seed} B={batch.batch_size} {batch.scalars()}")
    mismatches = check(impl.fn, batch.to(args.device))
    if not mismatches:
        print(f"{impl.name} agrees with the oracle on this batch")
        return 0
    print(report(batch, mismatches, impl.name))
    return 1


if __name__ == "__main__":
    sys.exit(main())
