"""The CPU kernel under AddressSanitizer: valid batches agree with the oracle, wild ones are
rejected, and no access is out of bounds (ASan aborts the driver process on the first one).

Slow (a separate -fsanitize=address build), so not in CI's default run:
    pytest -m slow tests/cuda_ext/test_asan.py -s
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

BUILD = """
from torch.utils import cpp_extension
from cuda_ext import build
build._ensure_ninja_on_path()
cpp_extension.load(
    name="specgate_ops_cpu_asan",
    sources=[str(build.CSRC / s) for s in build.CPU_SOURCES],
    extra_cflags=["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    extra_ldflags=["-fsanitize=address"],
    extra_include_paths=[str(build.CSRC)],
    build_directory=str(build.build_dir("cpu-asan")),
    is_python_module=False,
)
print(build.build_dir("cpu-asan") / "specgate_ops_cpu_asan.so")
"""


def test_cpu_kernel_under_asan():
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    libasan = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
    if not Path(libasan).is_file():
        pytest.skip(f"libasan not found ({libasan!r})")
    libstdcxx = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    # libstdc++ is preloaded with the runtime so that ASan's __cxa_throw interceptor finds the
    # real one (the op throws for invalid values).
    preload = f"{libasan} {Path(libstdcxx).resolve()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), ASAN_OPTIONS="detect_leaks=0")
    # Build with the runtime preloaded too: cpp_extension.load ends by loading the library.
    built = subprocess.run(
        [sys.executable, "-c", BUILD], cwd=ROOT, capture_output=True, text=True,
        env=dict(env, LD_PRELOAD=preload),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    library = built.stdout.strip().splitlines()[-1]
    run = subprocess.run(
        [sys.executable, "-m", "tests.cuda_ext.asan_driver", library], cwd=ROOT,
        capture_output=True, text=True, env=dict(env, LD_PRELOAD=preload),
    )  # fmt: skip
    print(run.stdout[-2000:])
    assert "ERROR: AddressSanitizer" not in run.stderr, run.stderr[-5000:]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "0 mismatches" in run.stdout
