"""The e2e gate as a pytest test (SPEC §2-3): ``pytest -m e2e --scenario PATH``."""
