"""The kernel conformance suite (SPEC §1), shipped in the package: run it with
``specgate kernel --impl MODULE:FN`` or ``pytest -m kernel --impl MODULE:FN``."""
