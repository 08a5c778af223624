"""`--dtype auto`: bfloat16 only where torch says the CPU has usable fast bf16 matrix units.

Nothing here assumes this CPU's features: each test asks torch what it sees (natively, and in a
subprocess with the variables that emulate an AVX2 machine) and checks the choice against that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from refserver.model import resolve_dtype

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

# What torch reports, and what auto chooses, in a fresh interpreter (so the env vars apply).
PROBE = """
import json, torch
from refserver.model import resolve_dtype
print(json.dumps({
    "amx": bool(torch.cpu._is_amx_tile_supported()),
    "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
    "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    "aten": torch.backends.cpu.get_cpu_capability(),
    "choice": resolve_dtype("auto", "cpu"),
}))
"""


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    return {**env, **extra}


def _probe(extra: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=_env(extra), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _expected(facts: dict) -> str:
    units = facts["amx"] or facts["avx512_bf16"]
    fast = units and facts["onednn_bf16"] and facts["aten"].startswith("AVX512")
    return "bfloat16" if fast else "float32"


@pytest.mark.parametrize("emulation", ["native", "avx2"])
def test_auto_follows_what_torch_reports(emulation):
    facts = _probe(AVX2_ENV if emulation == "avx2" else {})
    dtype, why = facts["choice"]
    print(emulation, facts)
    assert dtype == _expected(facts)
    assert f"ATen capability {facts['aten']}" in why
    if emulation == "avx2":
        # The variables cap ATen at AVX2 and oneDNN below bf16 on any CPU.
        assert (facts["aten"], facts["onednn_bf16"], dtype) == ("AVX2", False, "float32")


def test_auto_in_this_process_matches_torch():
    facts = {
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "aten": torch.backends.cpu.get_cpu_capability(),
    }
    assert resolve_dtype("auto", "cpu")[0] == _expected(facts)


def test_explicit_cuda_and_bad_values():
    assert resolve_dtype("float32", "cpu") == ("float32", "as requested")
    assert resolve_dtype("bfloat16", "cuda:0") == ("bfloat16", "as requested")
    assert resolve_dtype("auto", "cuda")[0] == "float32"  # the lossless configuration
    with pytest.raises(ValueError, match="dtype='float16'"):
        resolve_dtype("float16", "cpu")


@pytest.mark.parametrize("emulation", ["native", "avx2"])
def test_refserver_logs_the_choice_and_the_reason_once(emulation):
    """The real CLI: it resolves and logs the dtype before validating the rest, so an invalid
    --max-num-seqs ends it right after the log line, without loading the model."""
    extra = AVX2_ENV if emulation == "avx2" else {}
    expected = _expected(_probe(extra))
    out = subprocess.run(
        [sys.executable, "-m", "refserver", "--max-num-seqs", "0"],
        env=_env(extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if " dtype " in line]
    assert len(lines) == 1, out.stderr
    assert f"dtype {expected} (auto: " in lines[0], lines[0]
    assert "ATen capability" in lines[0]
