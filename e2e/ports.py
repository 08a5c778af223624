"""Free TCP ports that stay unique across concurrent processes (pytest-xdist workers, parallel CI).

Asking the OS for port 0 gives a free port, but two workers can be handed the same port between
our close() and the server's bind(). Each port we hand out is therefore also claimed with an
O_EXCL lock file that names the owning pid; claims of dead processes are reclaimed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path

import psutil

_LOCK_DIR = Path(tempfile.gettempdir()) / "specgate-ports"


def _os_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _claim(port: int) -> bool:
    _LOCK_DIR.mkdir(parents=True, exist_ok=True)
    lock = _LOCK_DIR / str(port)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and psutil.pid_exists(owner):
                return False
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale claim of a dead process
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def reserve_port(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port that is free now and claimed by this process until release_port()."""
    for _ in range(attempts):
        port = _os_free_port(host)
        if _claim(port):
            return port
    raise RuntimeError(f"could not reserve a free port on {host} after {attempts} attempts")


def release_port(port: int) -> None:
    lock = _LOCK_DIR / str(port)
    with contextlib.suppress(OSError, ValueError):
        if int(lock.read_text()) == os.getpid():
            lock.unlink()
