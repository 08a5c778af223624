"""Shared helpers for refserver tests: a real server launcher (the named configs and the held-out
prompts live in refserver.presets and refserver.heldout)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from refserver.engine import MODEL_NAME as MODEL  # noqa: F401
from refserver.heldout import heldout_prompts  # noqa: F401 (re-exported for the tests)
from refserver.presets import HYBRID, NGRAM, SPEC_CONFIGS  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM the server's process group and wait; returns the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def wait_healthy(self, timeout: float = 180) -> Server:
        """Block until GET /health answers 200; on exit or timeout raise with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"refserver exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.terminate()
        raise RuntimeError(f"refserver not healthy after {timeout}s:\n{self.log_tail()}")


def launch_server(tmp_path: Path, *extra: str, timeout: float = 180) -> Server:
    """Start `python -m refserver` in its own process group and wait for /health."""
    return start_server(tmp_path, *extra).wait_healthy(timeout)


def start_server(tmp_path: Path, *extra: str) -> Server:
    """Start `python -m refserver` in its own process group without waiting (see wait_healthy).

    Defaults: 8 slots, CPU, float32, seed 0, one torch thread; flags in `extra` come later on the
    command line and override them (e.g. "--dtype", "bfloat16", "--threads", "2").
    """
    port = free_port()
    log_path = tmp_path / f"refserver-{port}.log"
    cmd = [sys.executable, "-m", "refserver", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--max-num-seqs", "8", "--device", "cpu", "--dtype", "float32", "--seed", "0"]
    # REFSERVER_TEST_ARGS (e.g. "--device cuda") runs every server test on another device/dtype.
    cmd += ["--threads", "1", *shlex.split(os.environ.get("REFSERVER_TEST_ARGS", "")), *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(proc, f"http://127.0.0.1:{port}", log_path)
