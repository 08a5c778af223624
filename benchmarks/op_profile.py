"""Run an implementation on one sweep point a few times, for Nsight Compute (ncu) to profile.

    ncu --clock-control none -k regex:hybrid --launch-skip 3 -c 2 --set full \
        python -m benchmarks.op_profile --batch 256 --prompt 8192 --generated 256 --pattern early

It reuses the sweep's inputs (benchmarks.op_sweep), so a profile explains a row of its table.
Every call starts from the pristine outputs. ``--impl`` picks another implementation
(default: the op through torch.ops).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.op_sweep import Point, call, call_op, make_inputs, restore
from refimpl import impls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--prompt", type=int, required=True)
    parser.add_argument("--generated", type=int, required=True)
    parser.add_argument("--pattern", choices=("early", "late", "none", "threshold"), required=True)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--impl", default=None, help="module:function (default: the op)")
    args = parser.parse_args()

    if args.impl is None:
        import cuda_ext

        if not cuda_ext.is_available("cuda"):
            raise SystemExit("benchmarks.op_profile: the CUDA op is not built here")
        run = call_op
    else:
        fn = impls.load(args.impl).fn

        def run(inp):
            call(fn, inp)

    point = Point(args.batch, args.prompt, args.generated, args.pattern)
    inputs = make_inputs(point, "cuda", torch.Generator().manual_seed(0))
    for _ in range(args.calls):
        restore(inputs)
        run(inputs)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
