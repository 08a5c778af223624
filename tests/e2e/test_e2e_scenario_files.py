"""Scenario files: validation errors name the file, the key and what was expected; expansion and
hashing behave as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from e2e.scenario import ScenarioError, load_scenario, resolve_scenarios, substitute

VALID = {
    "name": "demo",
    "server": {
        "command": [
            "{python}",
            "-m",
            "refserver",
            "--port",
            "{port}",
            "--speculative-config",
            '{"method":"ngram","num_speculative_tokens":4}',
        ]
    },
    "request_defaults": {"max_tokens": 16, "temperature": 0},
    "requests": [{"id": "a", "messages": [{"role": "user", "content": "hi"}]}],
    "tolerances": {"accept_ratio": {"abs": 0.02}},
    "baseline": "../baselines/demo.yaml",
}


def write(tmp_path: Path, data: object, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_change(path_keys: list, value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    target = data
    for key in path_keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path_keys[-1]]
    else:
        target[path_keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("keys", "value", "key_text", "expected_text"),
    [
        (["kind"], "benchmark", "'kind'", "one of ['metrics', 'lossless']"),
        (
            ["adapter"],
            "trt",
            "'adapter'",
            "one of ['fastdeploy', 'llamacpp', 'sglang', 'trtllm', 'vllm']",
        ),
        (["server", "command"], "python -m x", "'server.command'", "a list of strings"),
        (["server", "command"], ["python", "-m", "x"], "'server.command'", "{port}"),
        (["server", "startup_timeout"], -5, "'server.startup_timeout'", "a positive number"),
        (["server", "health_path"], "health", "'server.health_path'", "starting with '/'"),
        (["server", "porta"], 1, "'server.porta'", "one of the known keys"),
        (["requests"], [], "'requests'", "a non-empty list"),
        (["requests", 0, "id"], KeyError, "'requests[0].id'", "a unique request id"),
        (
            ["requests", 0, "max_tokens"],
            "many",
            "'requests[0].max_tokens'",
            "a non-negative integer",
        ),
        (["requests", 0, "stream"], "yes", "'requests[0].stream'", "true or false"),
        (["requests", 0, "endpoint"], "embeddings", "'requests[0].endpoint'", "one of"),
        (["requests", 0, "messages"], "hi", "'requests[0].messages'", "{role, content}"),
        (
            ["tolerances", "accept_ratio"],
            {"absolute": 1},
            "'tolerances.accept_ratio.absolute'",
            "one of the known keys",
        ),
        (["tolerances", "accept_ratio"], {"abs": -1}, "'tolerances.accept_ratio.abs'", ">= 0"),
        (["baseline"], KeyError, "'baseline'", "a path to the baseline file"),
        (["concurrency"], 0, "'concurrency'", "a positive integer"),
        (["invariants"], ["per_head_lenght"], "'invariants[0]'", "an invariant of the fastdeploy"),
        (["servers"], {}, "'servers'", "no 'servers' key in a metrics scenario"),
    ],
)
def test_malformed_scenarios_name_file_key_and_expectation(
    tmp_path: Path, keys: list, value: object, key_text: str, expected_text: str
) -> None:
    path = write(tmp_path, with_change(keys, value))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message
    assert f"key {key_text}" in message
    assert expected_text in message


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.yaml: not valid YAML"):
        load_scenario(write(tmp_path, "a: [1, 2\n", "bad.yaml"))
    with pytest.raises(ScenarioError, match=r"list\.yaml: key '<top level>': expected a mapping"):
        load_scenario(write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_vllm_adapter_refuses_concurrency(tmp_path: Path) -> None:
    data = {**VALID, "adapter": "vllm", "concurrency": 8}
    with pytest.raises(ScenarioError, match="counter deltas around a request sent alone"):
        load_scenario(write(tmp_path, data))


def test_matrix_repeat_and_defaults_expand_requests(tmp_path: Path) -> None:
    data = {
        **VALID,
        "matrix": [
            [{"name": "nonstream", "stream": False}, {"name": "stream", "stream": True}],
            [{}, {"name": "logprobs", "logprobs": True, "top_logprobs": 5}],
        ],
        "requests": [
            {"id": "a", "messages": [{"role": "user", "content": "hi"}]},
            {
                "id": "b",
                "messages": [{"role": "user", "content": "yo"}],
                "repeat": 2,
                "max_tokens": 8,
            },
        ],
    }
    scenario = load_scenario(write(tmp_path, data))
    ids = [r.id for r in scenario.requests]
    assert ids[:4] == ["a/nonstream", "a/nonstream+logprobs", "a/stream", "a/stream+logprobs"]
    assert "b/stream+logprobs#2" in ids and len(ids) == 12
    first = scenario.requests[0].body
    assert first["max_tokens"] == 16 and first["temperature"] == 0 and first["stream"] is False
    assert scenario.requests[3].body["top_logprobs"] == 5
    assert scenario.requests[-1].body["max_tokens"] == 8
    assert "id" not in first and "repeat" not in first


def test_speculative_tokens_come_from_the_command(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, VALID)).speculative_tokens == 4


def test_messages_from_a_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text(
        '{"id": "p1", "kind": "open", "messages": [{"role": "user", "content": "tell me"}]}\n'
    )
    data = {**VALID, "requests": [{"id": "a", "messages_from": "prompts.jsonl#p1"}]}
    scenario = load_scenario(write(tmp_path, data))
    assert scenario.requests[0].body["messages"] == [{"role": "user", "content": "tell me"}]
    data["requests"] = [{"id": "a", "messages_from": "prompts.jsonl#nope"}]
    with pytest.raises(ScenarioError, match=r"'requests\[0\]\.messages_from'.*an id present"):
        load_scenario(write(tmp_path, data))


def test_hash_covers_what_is_measured_not_how_it_is_judged(tmp_path: Path) -> None:
    base = load_scenario(write(tmp_path, VALID)).hash
    looser = {**VALID, "tolerances": {"accept_ratio": {"abs": 0.5}}, "description": "x"}
    assert load_scenario(write(tmp_path, looser)).hash == base
    other_server = with_change(
        ["server", "command", 6], '{"method":"ngram","num_speculative_tokens":3}'
    )
    assert load_scenario(write(tmp_path, other_server)).hash != base
    other_request = with_change(["request_defaults", "max_tokens"], 17)
    assert load_scenario(write(tmp_path, other_request)).hash != base


def test_fingerprinted_files_are_part_of_the_hash(tmp_path: Path) -> None:
    weights = tmp_path / "head.safetensors"
    weights.write_bytes(b"run 1")
    data = with_change(["server", "fingerprint"], ["head.safetensors"])
    first = load_scenario(write(tmp_path, data)).hash
    assert first != load_scenario(write(tmp_path, VALID)).hash
    weights.write_bytes(b"run 2")
    assert load_scenario(write(tmp_path, data)).hash != first
    missing = with_change(["server", "fingerprint"], ["nope.bin"])
    with pytest.raises(ScenarioError, match=r"'server.fingerprint\[0\]': expected a file"):
        load_scenario(write(tmp_path, missing))


def test_placeholders_and_skip_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert substitute("--port={port} --m {port:metrics} {python}", {"": 1, "metrics": 2}, "py") == (
        "--port=1 --m 2 py"
    )
    assert substitute('{"method": "mtp"}', {"": 1}, "py") == '{"method": "mtp"}'  # JSON untouched
    missing = with_change(["server", "command"], ["no-such-engine-xyz", "--port", "{port}"])
    scenario = load_scenario(write(tmp_path, missing))
    assert "command 'no-such-engine-xyz' is not installed" in scenario.skip_reason()
    monkeypatch.delenv("SPECGATE_TEST_MODEL", raising=False)
    env_cmd = with_change(
        ["server", "command"], ["{python}", "{env:SPECGATE_TEST_MODEL}", "{port}"]
    )
    assert "SPECGATE_TEST_MODEL is not set" in load_scenario(write(tmp_path, env_cmd)).skip_reason()
    module = with_change(["server", "requires_modules"], ["no_such_module_xyz"])
    assert "no_such_module_xyz" in load_scenario(write(tmp_path, module)).skip_reason()
    assert load_scenario(write(tmp_path, VALID)).skip_reason() is None


def test_lossless_scenarios_need_reference_and_candidate(tmp_path: Path) -> None:
    server = VALID["server"]
    data = {
        "name": "l",
        "kind": "lossless",
        "servers": {"reference": server},
        "requests": VALID["requests"],
    }
    with pytest.raises(ScenarioError, match=r"'servers.candidate'.*required"):
        load_scenario(write(tmp_path, data))
    data["servers"]["candidate"] = server
    scenario = load_scenario(write(tmp_path, data))
    assert scenario.near_tie_max_gap == 1e-3 and scenario.baseline is None


def test_resolve_by_name_stem_or_path(tmp_path: Path) -> None:
    folder = tmp_path / "scenarios"
    folder.mkdir()
    path = write(folder, {**VALID, "name": "declared"}, "file-stem.yaml")
    assert resolve_scenarios(["file-stem"], folder) == [path]
    assert resolve_scenarios(["declared"], folder) == [path]
    assert resolve_scenarios([str(path)], folder) == [path]
    with pytest.raises(ScenarioError, match="no scenario of that name"):
        resolve_scenarios(["nope"], folder)


def test_every_committed_scenario_loads() -> None:
    folder = Path(__file__).resolve().parents[2] / "scenarios"
    paths = resolve_scenarios([], folder)
    assert len(paths) >= 8
    for path in paths:
        scenario = load_scenario(path)
        assert scenario.requests, path
        if scenario.kind == "metrics":
            assert scenario.speculative_tokens, path  # K known, so per_head_length is checked


def test_real_engine_examples_skip_with_a_clear_reason_when_not_installed(monkeypatch) -> None:
    folder = Path(__file__).resolve().parents[2] / "scenarios" / "examples"
    monkeypatch.delenv("VLLM_PYTHON", raising=False)
    vllm = load_scenario(folder / "vllm-ngram.yaml")
    assert vllm.skip_reason() == (
        "vllm-ngram: the server cannot run here: environment variable VLLM_PYTHON is not set"
    )
    # Runs on CPU as shipped: fixed dtype (auto would pick bf16 there) and the KV cache size the
    # CPU build needs to start.
    assert vllm.server.command[vllm.server.command.index("--dtype") + 1] == "float32"
    assert vllm.server.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    fastdeploy = load_scenario(folder / "fastdeploy-ernie-21b-hybrid.yaml")
    if importlib.util.find_spec("fastdeploy") is None:
        assert "Python module 'fastdeploy' is not installed" in fastdeploy.skip_reason()
    command = " ".join(fastdeploy.server.command)
    for flag in (
        "--max-num-seqs 8",
        "--max-model-len 4096",
        "--enable-logprob",
        "wint4",
        "--enable-overlap-schedule",
        '"num_speculative_tokens":5',
        '"num_model_steps":3',
        '"mtp_strategy":"with_ngram"',
        '"max_ngram_size":3',
        '"min_ngram_size":1',
    ):
        assert flag in command
    assert {k: (t.abs, t.rel) for k, t in fastdeploy.tolerances.items()} == {
        "accept_ratio": (0.02, None),
        "average_accept_length": (0.1, None),
        "accepted_tokens_per_head": (2.0, None),
        "accept_ratio_per_head": (0.05, None),
    }
