"""Shared helpers for refserver tests: prompts, speculative configs, a real server launcher."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "refserver" / "assets" / "prompts" / "heldout.jsonl"
MODEL = "SmolLM2-135M-Instruct"
HYBRID = (
    '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":3,'
    '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
)
NGRAM = '{"method":"ngram","num_speculative_tokens":5,"max_ngram_size":3,"min_ngram_size":1}'


def heldout_prompts() -> list[dict]:
    return [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]


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


def launch_server(tmp_path: Path, *extra: str, timeout: float = 180) -> Server:
    """Start `python -m refserver` in its own process group and wait for /health."""
    port = free_port()
    log_path = tmp_path / f"refserver-{port}.log"
    cmd = [sys.executable, "-m", "refserver", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--max-num-seqs", "8", "--device", "cpu", "--dtype", "float32", "--seed", "0"]
    cmd += ["--threads", "1", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"refserver exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.5)
    server.terminate()
    raise RuntimeError(f"refserver not healthy after {timeout}s:\n{server.log_tail()}")
