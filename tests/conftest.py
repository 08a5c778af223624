"""Session set-up shared by every test folder."""

from __future__ import annotations


def pytest_sessionstart(session) -> None:
    """Build refserver's CPU kernels once, here, before any test starts a server: otherwise the
    first server (or several at once, waiting on the build's lock) compiles them inside its
    start-up deadline. A failed build is not raised here; the servers log it and
    tests/refserver/test_rows_linear.py fails with the compiler's message."""
    from refserver import rows_linear

    rows_linear.unavailable_reason()
