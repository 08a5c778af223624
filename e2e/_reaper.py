"""Watchdog that kills a server's process group when the harness process disappears.

Teardown normally happens in ServerProcess.stop() (success, failure, Ctrl-C). This covers the
cases where Python never gets to run it: the harness is SIGKILLed, pytest-timeout calls
os._exit(), or CI kills the job. The watchdog runs in its own session, so signals sent to the
harness's process group do not reach it.

Usage: python -m e2e._reaper PARENT_PID PARENT_CREATE_TIME SERVER_PGID
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import psutil

POLL_S = 0.3
GRACE_S = 5.0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return (
            abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str]) -> int:
    parent, create_time, pgid = int(argv[0]), float(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        if not _group_alive(pgid):
            return 0
        if not _parent_alive(parent, create_time):
            break
        time.sleep(POLL_S)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
