"""Server lifecycle: launch a scenario's command, wait until healthy, tear the whole tree down.

The server runs in its own session (so its process group is its own and a terminal Ctrl-C does not
reach it directly), with stdout+stderr in a log file. Health is polled until a deadline, and a
process that exits during startup fails at once instead of after the deadline. Teardown sends
SIGTERM to the group, then SIGKILL after a grace period, and also kills descendants that started
their own session. A watchdog (e2e._reaper) kills the group if this process dies without running
teardown. Every failure message carries the first error and traceback lines of the server log
and its tail: engines like vLLM print the root cause above a long shutdown traceback.

`describe_server` records what was measured, for baseline provenance: the command as run (ports
masked), the model ids the server serves, its version where it has an endpoint for it (vLLM's
/version), and the device it computes on, seen from the outside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from e2e.baseline import cpu_model
from e2e.ports import release_port, reserve_port
from e2e.scenario import ServerSpec, substitute

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
FIRST_ERROR_LINES = 25
HOST = "127.0.0.1"
# A line that starts an error report: a Python traceback, or a log record of level ERROR/CRITICAL.
_ERROR_START = re.compile(r"Traceback \(most recent call last\)|\b(ERROR|CRITICAL|FATAL)\b")


class ServerStartError(RuntimeError):
    """The server died or never became healthy; the message includes the command and log tail."""


def _strip_prefix(line: str, prefix: str) -> str:
    return line[len(prefix) :] if prefix and line.startswith(prefix) else line


def first_error(text: str, max_lines: int = FIRST_ERROR_LINES) -> str | None:
    """The first error report in a log, None when there is none.

    It starts at the first ERROR/CRITICAL/FATAL record or traceback and runs through the
    traceback's exception line when a traceback follows within two lines. Engines that prefix
    every line of a subprocess (vLLM's '(EngineCore pid=N) ') are handled by comparing lines
    without the prefix of the traceback's first line. A block longer than max_lines keeps its
    first lines and the exception line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _ERROR_START.search(line)), None)
    if start is None:
        return None
    traceback_at = next(
        (j for j in range(start, min(start + 3, len(lines))) if "Traceback (most" in lines[j]),
        None,
    )
    if traceback_at is None:
        return "\n".join(lines[start : start + max_lines])
    prefix = lines[traceback_at][: lines[traceback_at].index("Traceback (most")]
    end = len(lines) - 1
    for j in range(traceback_at + 1, len(lines)):
        body = _strip_prefix(lines[j], prefix)
        # The exception line: the first unindented line after the frames.
        if body and not body[:1].isspace() and j > traceback_at + 1:
            end = j
            break
    block = lines[start : end + 1]
    if len(block) > max_lines:
        block = [*block[: max_lines - 2], "    ...", block[-1]]
    return "\n".join(block)


def log_excerpt(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The first error report of the log (when it is not already in the tail), then the tail."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    tail_text = "\n".join(tail) if tail else "(log is empty)"
    error = first_error(text)
    if error and error.splitlines()[0] not in tail:
        return (
            f"--- first error in the log ---\n{error}\n--- last {lines} log lines ---\n{tail_text}"
        )
    return f"--- last {lines} log lines ---\n{tail_text}"


@dataclass
class Endpoint:
    """Where a scenario's requests go: base URL, metrics URL, and how the server was started."""

    url: str
    metrics_url: str
    command: str | None = None
    log_path: Path | None = None
    masked_command: str | None = None  # the command as run, with {port} for its ports
    pid: int | None = None


@dataclass
class ServerProcess:
    """One launched server. Use as a context manager, or call start()/stop()."""

    spec: ServerSpec
    log_dir: Path
    name: str = "server"
    grace_s: float = 10.0
    ports: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _reaper: subprocess.Popen[bytes] | None = None
    _log_file: object = None
    log_path: Path | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.ports['']}"

    def endpoint(self) -> Endpoint:
        metrics = self.spec.metrics_url
        metrics_url = (
            substitute(metrics, self.ports, sys.executable) if metrics else self.url + "/metrics"
        )
        return Endpoint(
            self.url,
            metrics_url,
            shlex.join(self.argv),
            self.log_path,
            masked_command=self.masked_command(),
            pid=self.pid,
        )

    def masked_command(self) -> str:
        """The command after {env:...} and {python} expansion, its ports shown as placeholders
        (they change on every run without changing what is measured)."""
        placeholders = {name: "{port}" if not name else f"{{port:{name}}}" for name in self.ports}
        words = [substitute(w, placeholders, sys.executable) for w in self.spec.command or ()]
        return shlex.join(words)

    @property
    def pid(self) -> int | None:
        """The server's process id (its process group id too), None when not running."""
        return self._proc.pid if self._proc is not None else None

    def start(self, wait: bool = True) -> Endpoint:
        """Launch the command; with wait (the default) block until it is healthy.

        `wait=False` returns as soon as the process runs, so several servers can load at once;
        call wait_healthy() before sending requests."""
        if self.spec.command is None:
            raise ValueError("ServerProcess needs a spec with a command, not a url")
        self.ports = {name: reserve_port(HOST) for name in self.spec.port_names()}
        self.argv = [substitute(word, self.ports, sys.executable) for word in self.spec.command]
        env = {
            **os.environ,
            **{k: substitute(v, self.ports, sys.executable) for k, v in self.spec.env.items()},
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}-{self.ports['']}.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        log.info("starting %s: %s (log: %s)", self.name, shlex.join(self.argv), self.log_path)
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.spec.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise ServerStartError(
                f"{self.name}: cannot start {shlex.join(self.argv)}: {exc}"
            ) from exc
        self._start_reaper()
        if wait:
            self.wait_healthy()
        return self.endpoint()

    def _start_reaper(self) -> None:
        me = psutil.Process()
        self._reaper = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "e2e._reaper",
                str(me.pid),
                repr(me.create_time()),
                str(self._proc.pid),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

    def wait_healthy(self) -> None:
        """Poll the health path until 200; fail at once if the process exits and at the spec's
        startup_timeout otherwise, tearing the server down and raising with the log excerpt."""
        try:
            self._poll_health()
        except BaseException:
            self.stop()
            raise

    def _poll_health(self) -> None:
        timeout = self.spec.startup_timeout
        deadline = time.monotonic() + timeout
        health = self.url + self.spec.health_path
        last_problem = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    self._failure(f"exited with code {code} before becoming healthy")
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    self._failure(
                        f"did not become healthy at {health} within {timeout:g} s "
                        f"(last: {last_problem})"
                    )
                )
            try:
                response = requests.get(health, timeout=min(2.0, max(remaining, 0.05)))
                if response.status_code == 200:
                    log.info("%s healthy at %s", self.name, self.url)
                    return
                last_problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last_problem = type(exc).__name__
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0)))

    def _failure(self, what: str) -> str:
        excerpt = log_excerpt(self.log_path) if self.log_path else "(no log)"
        return (
            f"server {self.name!r} {what}\n  command: {shlex.join(self.argv)}\n"
            f"  log: {self.log_path}\n{excerpt}"
        )

    def failure_context(self) -> str:
        """Command and log tail, for failures that happen after startup (e.g. a request error)."""
        return self._failure("log at the time of the failure")

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit by itself (e.g. after a signal); returns its exit code.
        Raises subprocess.TimeoutExpired when it is still running after `timeout` seconds."""
        if self._proc is None:
            raise RuntimeError(f"server {self.name!r} is not running")
        return self._proc.wait(timeout)

    def stop(self) -> int | None:
        """Terminate the whole process tree; safe to call more than once. Returns the server's
        exit code (0 for a clean shutdown on SIGTERM, negative for the signal that killed it),
        None when nothing was running."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            code = _terminate_tree(proc, self.grace_s)
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            with contextlib.suppress(ProcessLookupError):
                reaper.kill()
            reaper.wait()
        for port in self.ports.values():
            release_port(port)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    return members


def _terminate_tree(proc: subprocess.Popen[bytes], grace_s: float) -> int | None:
    """SIGTERM the group (and escaped descendants), SIGKILL what is left after grace_s; returns
    the leader's exit code (psutil reaps it while waiting, so Popen alone would not know it)."""
    code = proc.poll()  # None while it runs; an exit code when it already stopped by itself
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    try:
        root = psutil.Process(proc.pid)
        targets = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        targets = {}
    targets.update({p.pid: p for p in _group_members(pgid)})
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    for p in targets.values():  # descendants that escaped the group with their own setsid()
        # ProcessLookupError: it exited (and was reaped) since the snapshot, e.g. a vLLM worker
        # its parent reaped right after the group's SIGTERM; nothing is left to stop.
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) != pgid:
                p.terminate()
    gone, alive = psutil.wait_procs(list(targets.values()), timeout=grace_s)
    if alive:
        log.warning(
            "server processes %s ignored SIGTERM for %g s; killing", [p.pid for p in alive], grace_s
        )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        killed, _ = psutil.wait_procs(alive, timeout=5)
        gone += killed
    codes = {p.pid: p.returncode for p in gone}
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if code is None:
        code = codes.get(proc.pid, proc.returncode)
    return None if code is None else int(code)


_ACCELERATOR_FILES = ("/dev/nvidia", "/dev/kfd", "/dev/accel", "/dev/dri/renderD")


def server_device(pid: int | None) -> str:
    """The device a launched server computes on, seen from outside its process tree: an
    accelerator when one of its processes maps a GPU device file, the host's CPU otherwise."""
    if pid is None:
        return "unknown (not launched by this run)"
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return "unknown (server process gone)"
    for proc in tree:
        try:
            maps = Path(f"/proc/{proc.pid}/maps").read_text(errors="replace")
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split()[-1] if line.split() else ""
            if path.startswith(_ACCELERATOR_FILES):
                return f"accelerator: {path} mapped by pid {proc.pid}"
    return f"cpu: {cpu_model()}"


def _get_json(url: str) -> tuple[object | None, str]:
    try:
        response = requests.get(url, timeout=5)
    except requests.RequestException as exc:
        return None, type(exc).__name__
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    try:
        return response.json(), ""
    except ValueError:
        return None, "not JSON"


def describe_server(endpoint: Endpoint) -> dict[str, object]:
    """What was measured, for provenance: the command as run (ports masked), the model ids of
    /v1/models, the engine version from /version where the server has it, and its device."""
    models, problem = _get_json(endpoint.url + "/v1/models")
    data = models.get("data") if isinstance(models, dict) else None
    served = (
        [m.get("id") for m in data if isinstance(m, dict)]
        if isinstance(data, list)
        else f"unavailable (GET /v1/models: {problem or 'no data list'})"
    )
    version, problem = _get_json(endpoint.url + "/version")
    engine_version = (
        str(version["version"])
        if isinstance(version, dict) and "version" in version
        else f"unavailable (GET /version: {problem or 'no version key'})"
    )
    return {
        "server_command": endpoint.masked_command or f"(running server at {endpoint.url})",
        "served_models": served,
        "engine_version": engine_version,
        "server_device": server_device(endpoint.pid),
    }


class ServerPool:
    """One server per distinct configuration, started on first use and reused after.

    `override_url` (--server-url) replaces every launched 'server'/'candidate' with a running one.
    """

    def __init__(self, log_dir: Path, override_url: str | None = None):
        self.log_dir = log_dir
        self.override_url = override_url.rstrip("/") if override_url else None
        self._servers: dict[str, ServerProcess] = {}
        self._failed: dict[str, str] = {}

    def endpoint(self, spec: ServerSpec, role: str = "server", name: str = "server") -> Endpoint:
        if self.override_url and role in ("server", "candidate"):
            return Endpoint(self.override_url, self.override_url + "/metrics")
        if spec.url:
            metrics = spec.metrics_url or spec.url + "/metrics"
            return Endpoint(spec.url, metrics)
        key = spec.key()
        if key in self._failed:  # do not relaunch a broken command for every scenario using it
            raise ServerStartError(self._failed[key])
        if key not in self._servers:
            server = ServerProcess(spec, self.log_dir, name=name)
            try:
                server.start()
            except ServerStartError as exc:
                self._failed[key] = str(exc)
                raise
            self._servers[key] = server
        return self._servers[key].endpoint()

    def endpoints(self, wanted: list[tuple[ServerSpec, str, str]]) -> list[Endpoint]:
        """Several (spec, role, name) at once, launched in parallel: on CPU, model loading
        dominates a lossless scenario's time. An interrupt does not wait for the launches; a
        server that comes up after close() is killed by its watchdog when this process exits."""
        if len({spec.key() for spec, _, _ in wanted}) < len(wanted):
            return [self.endpoint(*w) for w in wanted]
        executor = ThreadPoolExecutor(max_workers=len(wanted))
        try:
            futures = [executor.submit(self.endpoint, *w) for w in wanted]
            return [f.result() for f in futures]
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def server_for(self, spec: ServerSpec) -> ServerProcess | None:
        return self._servers.get(spec.key())

    def release(self, spec: ServerSpec) -> None:
        server = self._servers.pop(spec.key(), None)
        if server is not None:
            server.stop()

    def close(self) -> None:
        while self._servers:
            _, server = self._servers.popitem()
            server.stop()
