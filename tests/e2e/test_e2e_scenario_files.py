"""Scenario files: validation errors name the file, the key and what was expected; expansion and
hashing behave as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from e2e_helpers import dump_yaml

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
    path.write_text(data if isinstance(data, str) else dump_yaml(data))
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


def test_requires_cuda_skips_where_torch_sees_no_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2e.scenario import schema

    gpu = load_scenario(write(tmp_path, with_change(["server", "requires_cuda"], True)))
    monkeypatch.setattr(schema, "_cuda_available", lambda: False)
    assert "needs a CUDA device (requires_cuda)" in gpu.skip_reason()
    monkeypatch.setattr(schema, "_cuda_available", lambda: True)
    assert gpu.skip_reason() is None
    with pytest.raises(ScenarioError, match="requires_cuda"):
        load_scenario(write(tmp_path, with_change(["server", "requires_cuda"], "yes")))


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


# --- hostile or careless files (issue 10): rejected at load, naming the file, key and type -----


def test_a_typo_in_a_request_key_names_it_and_suggests_the_field(tmp_path: Path) -> None:
    data = with_change(["requests", 0, "max_tokns"], 8)
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, data))
    message = str(info.value)
    assert "key 'requests[0].max_tokns': expected an OpenAI chat completion request field" in (
        message
    )
    assert "(did you mean 'max_tokens'?)" in message and "'extra_body:'" in message
    typo_in_defaults = with_change(["request_defaults", "temprature"], 0)
    with pytest.raises(ScenarioError, match=r"'request_defaults\.temprature'.*'temperature'"):
        load_scenario(write(tmp_path, typo_in_defaults))
    typo_in_matrix = {**VALID, "matrix": [[{"name": "s", "strem": True}]]}
    with pytest.raises(ScenarioError, match=r"'matrix\[0\]\[0\]\.strem'.*'stream'"):
        load_scenario(write(tmp_path, typo_in_matrix))


def test_a_typo_in_a_scenario_key_suggests_the_known_key(tmp_path: Path) -> None:
    data = {**VALID, "tolerance": {}}
    with pytest.raises(ScenarioError, match=r"key 'tolerance'.*\(did you mean 'tolerances'\?\)"):
        load_scenario(write(tmp_path, data))


def test_engine_fields_are_declared_per_adapter_or_go_under_extra_body(tmp_path: Path) -> None:
    declared = with_change(["request_defaults", "min_tokens"], 4)  # FastDeploy's, refserver's
    assert load_scenario(write(tmp_path, declared)).requests[0].body["min_tokens"] == 4
    data = {
        **VALID,
        "request_defaults": {"max_tokens": 16, "extra_body": {"my_engine_knob": 1, "b": 2}},
        "matrix": [[{"name": "x", "extra_body": {"b": 3}}]],
        "requests": [
            {
                "id": "a",
                "messages": [{"role": "user", "content": "hi"}],
                "extra_body": {"c": [4]},
            }
        ],
    }
    [request] = load_scenario(write(tmp_path, data)).requests
    assert request.body == {  # sent flat, as the openai client sends extra_body
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        "my_engine_knob": 1,
        "b": 3,
        "c": [4],
    }
    clash = {**VALID, "requests": [{**VALID["requests"][0], "extra_body": {"max_tokens": 3}}]}
    with pytest.raises(ScenarioError, match=r"'requests\[0\]\.extra_body\.max_tokens'.*not also"):
        load_scenario(write(tmp_path, clash))
    not_a_mapping = with_change(["request_defaults", "extra_body"], ["x"])
    with pytest.raises(ScenarioError, match=r"'request_defaults\.extra_body': expected a mapping"):
        load_scenario(write(tmp_path, not_a_mapping))


def test_vllm_fields_are_not_fastdeploy_fields(tmp_path: Path) -> None:
    data = with_change(["request_defaults", "ignore_eos"], True)
    with pytest.raises(ScenarioError, match=r"'request_defaults\.ignore_eos'.*fastdeploy adapter"):
        load_scenario(write(tmp_path, data))
    vllm = {**data, "adapter": "vllm"}
    assert load_scenario(write(tmp_path, vllm)).requests[0].body["ignore_eos"] is True


def test_generate_requests_take_sglang_fields(tmp_path: Path) -> None:
    request = {"id": "g", "endpoint": "generate", "text": "hi"}
    data = {**VALID, "adapter": "sglang", "request_defaults": {}, "requests": [request]}
    data["requests"][0]["sampling_params"] = {"max_new_tokens": 8}
    assert load_scenario(write(tmp_path, data)).requests[0].body["sampling_params"]
    data["requests"][0]["max_tokens"] = 8
    with pytest.raises(ScenarioError, match=r"'requests\[0\]\.max_tokens'.*inside sampling_params"):
        load_scenario(write(tmp_path, data))


GOOD_TEXT = dump_yaml(VALID)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD_TEXT + "name: again\n", r"key 'name' appears twice in one mapping \(first on line"),
        (
            GOOD_TEXT.replace("max_tokens: 16", "max_tokens: 16\n  temperature: 1"),
            r"line \d+, column 3: key 'temperature' appears twice",
        ),
        (GOOD_TEXT.replace("max_tokens: 16", "max_tokens: &n 16"), r"an anchor \(&n\)"),
        (GOOD_TEXT + "tags: [*n]\n", r"an alias \(\*n\)"),
        (GOOD_TEXT + "<<: {tags: [x]}\n", r"a merge key \(<<\)"),
        (GOOD_TEXT + "tags: " + "[" * 500 + "]" * 500 + "\n", "nested more than 64 levels"),
        (GOOD_TEXT + "tags: !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_yaml_that_the_loader_refuses(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError, match=expected) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ")


def alias_bomb() -> str:
    """A scenario whose request body holds nine levels of nine aliases: under 1 KB that expand to
    9**9 (387 million) strings when the body is copied, hashed or sent."""
    lines = [
        "name: bomb",
        "server: {url: 'http://127.0.0.1:1'}",
        "baseline: b.yaml",
        "requests: [{id: a, messages: [{role: user, content: hi}]}]",
        "request_defaults:",
        "  extra_body:",
        "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    lines += [f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_its_first_anchor(tmp_path: Path) -> None:
    bomb = alias_bomb()
    assert len(bomb.encode()) < 1024
    with pytest.raises(ScenarioError, match=r"line 7, column 9: an anchor \(&a0\) is not allowed"):
        load_scenario(write(tmp_path, bomb))
    folder = tmp_path / "scenarios"
    folder.mkdir()
    write(folder, bomb, "bomb.yaml")  # looking scenarios up by name reads it too
    with pytest.raises(ScenarioError, match="no scenario of that name"):
        resolve_scenarios(["bomb-name"], folder)


def test_a_binary_scenario_names_the_file_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_bytes(GOOD_TEXT.encode() + b"\x80\x81")
    with pytest.raises(ScenarioError, match=r"demo\.yaml: not UTF-8 text \(byte 0x80 at offset"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (b"not json\n", r"line 1: not JSON \(Expecting value at column 1\)"),
        (b'{"id": "p1"}\n', r"line 1: key 'messages': expected a non-empty list.*required"),
        (b'{"id": "p1", "messages": "hi"}\n', r"line 1: key 'messages'.*got 'hi'"),
        (b"[1, 2]\n", r"line 1: expected a JSON object with 'id' and 'messages', got a list"),
        (b'{"messages": [{"role": "user", "content": "x"}]}\n', r"line 1: key 'id'"),
        (
            b'{"id": "p1", "messages": [{"role": "user", "content": "x"}]}\n\n{"id": \n',
            r"line 3: not JSON",  # every line is checked, not only up to the one used
        ),
        (b'{"id": "p1"}\xff\n', r"not UTF-8 text \(byte 0xff at offset 12\)"),
    ],
)
def test_malformed_prompt_files_name_the_file_line_and_key(
    tmp_path: Path, lines: bytes, expected: str
) -> None:
    (tmp_path / "prompts.jsonl").write_bytes(lines)
    data = {**VALID, "requests": [{"id": "a", "messages_from": "prompts.jsonl#p1"}]}
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError, match=expected) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'prompts.jsonl'}: ")
    assert f"the prompt file of {path} key 'requests[0].messages_from'" in message
