"""The oracle for hybrid_mtp_ngram (SPEC §1): a plain-Python definition, its torch adapter,
a batch generator that hits every edge case, and the comparison used by the kernel suite."""

from refimpl.batch import Batch, make_batch
from refimpl.compare import Mismatch, check, compare, report
from refimpl.generate import PLANS, RECIPES, Recipe, case_seed, generate
from refimpl.op import hybrid_mtp_ngram
from refimpl.validate import HybridArgumentError

__all__ = [
    "PLANS",
    "RECIPES",
    "Batch",
    "HybridArgumentError",
    "Mismatch",
    "Recipe",
    "case_seed",
    "check",
    "compare",
    "generate",
    "hybrid_mtp_ngram",
    "make_batch",
    "report",
]
