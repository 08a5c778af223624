"""Shared helpers for refserver tests: real refserver processes through the gate's launcher
(e2e.server.ServerProcess) with the test defaults. The named configs and the held-out prompts
live in refserver.presets and refserver.heldout."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from e2e.scenario import ServerSpec
from e2e.server import ServerProcess
from refserver.engine import MODEL_NAME as MODEL  # noqa: F401
from refserver.heldout import heldout_prompts  # noqa: F401 (re-exported for the tests)
from refserver.presets import HYBRID, NGRAM, SPEC_CONFIGS  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
# A draining server finishes its in-flight requests before it exits on SIGTERM.
DRAIN_GRACE_S = 60.0


def refserver_spec(*extra: str, startup_timeout: float = 180) -> ServerSpec:
    """`python -m refserver` with the test defaults: 8 slots, CPU, float32, seed 0, one torch
    thread; REFSERVER_TEST_ARGS (e.g. "--device cuda") and then `extra` come later on the
    command line and override them (e.g. "--dtype", "bfloat16", "--threads", "2")."""
    command = ["{python}", "-m", "refserver", "--host", "127.0.0.1", "--port", "{port}"]
    command += ["--max-num-seqs", "8", "--device", "cpu", "--dtype", "float32", "--seed", "0"]
    command += ["--threads", "1", *shlex.split(os.environ.get("REFSERVER_TEST_ARGS", "")), *extra]
    return ServerSpec(command=tuple(command), cwd=str(REPO), startup_timeout=startup_timeout)


def launch_server(tmp_path: Path, *extra: str, timeout: float = 180) -> ServerProcess:
    """Start a refserver (see refserver_spec) and wait until /health answers; its log is in
    tmp_path. Stop it with .stop(), which returns the exit code."""
    server = ServerProcess(
        refserver_spec(*extra, startup_timeout=timeout),
        tmp_path,
        name="refserver",
        grace_s=DRAIN_GRACE_S,
    )
    server.start()
    return server
