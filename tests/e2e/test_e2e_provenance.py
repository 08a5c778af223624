"""Baselines that say what was measured: the hash follows {env:...}, provenance names the command
as run, the served model, the engine version and the server's device; a failed start quotes the
first error of the log, not only its tail."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from e2e_helpers import fake_scenario

from e2e.scenario import ServerSpec, load_scenario
from e2e.server import ServerProcess, ServerStartError, describe_server, first_error

VLLM_STYLE_LOG = textwrap.dedent(
    """\
    (APIServer pid=1) INFO 12-01 09:14:43 [api_utils.py:286] non-default args: {...}
    (EngineCore pid=2) ERROR 12-01 09:15:02 [core.py:1010] EngineCore failed to start.
    (EngineCore pid=2) Traceback (most recent call last):
    (EngineCore pid=2)   File "/v/vllm/v1/engine/core.py", line 1001, in run_engine_core
    (EngineCore pid=2)     engine_core = EngineCoreProc(*args, **kwargs)
    (EngineCore pid=2)   File "/v/vllm/v1/worker/cpu_worker.py", line 88, in determine_available_memory
    (EngineCore pid=2)     raise ValueError(msg)
    (EngineCore pid=2) ValueError: VLLM_CPU_KVCACHE_SPACE is not set and 4.0 GiB is more than the free memory
    (EngineCore pid=2) INFO 12-01 09:15:02 [core.py:1020] shutting down
    """
)


def test_first_error_reads_through_a_prefixed_traceback_to_its_exception() -> None:
    excerpt = first_error(VLLM_STYLE_LOG)
    assert excerpt is not None
    lines = excerpt.splitlines()
    assert "EngineCore failed to start" in lines[0]
    assert lines[-1].endswith(
        "ValueError: VLLM_CPU_KVCACHE_SPACE is not set and 4.0 GiB is more than the free memory"
    )
    assert "shutting down" not in excerpt
    assert first_error("INFO all good\nINFO still good\n") is None


def test_failed_start_quotes_the_root_cause_above_a_long_tail(tmp_path: Path) -> None:
    """The cause is printed first, then 200 lines of shutdown noise: the last 40 lines alone
    would not show it."""
    code = textwrap.dedent(
        """
        import sys
        print("ERROR loading model: weights file truncated at byte 4096", flush=True)
        for i in range(200):
            print(f"INFO shutdown step {i}", flush=True)
        sys.exit(1)
        """
    )
    marker = f"specgate-test-{uuid.uuid4().hex[:8]}"
    spec = ServerSpec(command=("{python}", "-c", code, "{port}", marker), startup_timeout=30)
    with pytest.raises(ServerStartError) as info:
        ServerProcess(spec, tmp_path).start()
    message = str(info.value)
    assert "--- first error in the log ---" in message
    assert "weights file truncated at byte 4096" in message
    assert "INFO shutdown step 199" in message  # and the tail is still there


def test_scenario_hash_follows_env_placeholders(tmp_path: Path, monkeypatch) -> None:
    path = fake_scenario(tmp_path, "envhash", {"accept_nums": [1, 2]})
    text = path.read_text().replace(
        "--config", "--model\n  - '{env:SPECGATE_TEST_MODEL}'\n  - --config"
    )
    path.write_text(text)
    monkeypatch.setenv("SPECGATE_TEST_MODEL", "model-a")
    a = load_scenario(path).hash
    assert load_scenario(path).hash == a
    monkeypatch.setenv("SPECGATE_TEST_MODEL", "model-b")
    assert load_scenario(path).hash != a, (
        "a model switch through the environment must make the baseline stale"
    )


def test_describe_server_records_command_models_version_and_device(tmp_path: Path) -> None:
    """Against a real process that serves /v1/models and /version (written here; the harness's
    fake engine has neither)."""
    code = textwrap.dedent(
        """
        import json, sys
        from http.server import BaseHTTPRequestHandler, HTTPServer
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = {"/health": {}, "/version": {"version": "9.9.9"},
                        "/v1/models": {"object": "list", "data": [{"id": "tiny-model"}]}}.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(json.dumps(body or {}).encode())
            def log_message(self, *a):
                pass
        HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
        """
    )
    spec = ServerSpec(command=("{python}", "-c", code, "{port}", "--seed", "0"), startup_timeout=30)
    with ServerProcess(spec, tmp_path) as server:
        endpoint = server.endpoint()
        described = describe_server(endpoint)
    assert described["server_command"].startswith(sys.executable)
    assert described["server_command"].endswith("'{port}' --seed 0")  # the port is masked
    assert str(server.ports[""]) not in described["server_command"]
    assert described["served_models"] == ["tiny-model"]
    assert described["engine_version"] == "9.9.9"
    assert str(described["server_device"]).startswith("cpu: ")


def test_describe_server_says_what_it_could_not_read(tmp_path: Path) -> None:
    spec = ServerSpec(
        command=("{python}", "-m", "http.server", "{port}", "--bind", "127.0.0.1"),
        health_path="/",
        startup_timeout=30,
    )
    with ServerProcess(spec, tmp_path) as server:
        described = describe_server(server.endpoint())
    assert described["served_models"] == "unavailable (GET /v1/models: HTTP 404)"
    assert described["engine_version"] == "unavailable (GET /version: HTTP 404)"
