"""Exploration driver (issue 15 v11): the op sweep over a subset of points."""

import sys

from benchmarks import op_sweep as s

sel, out = sys.argv[1], sys.argv[2]
pts = s.sweep(False)
if sel == "nob1":
    pts = [p for p in pts if p.batch >= 8]
elif sel == "small":
    pts = [p for p in pts if p.batch <= 8]
s.run("cuda_ext:hybrid_mtp_ngram", s.STRAIGHTFORWARD, "cuda", False, out, pts)
