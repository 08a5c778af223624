"""Build (and cache) the specgate op libraries with torch.utils.cpp_extension.

Two shared libraries, loaded with ``torch.ops.load_library``:

- ``specgate_ops_cpu``: the schema (``TORCH_LIBRARY``) and the CPU kernel. Needs only a C++
  compiler, so CI builds it on a machine without CUDA.
- ``specgate_ops_cuda``: the CUDA kernel (``TORCH_LIBRARY_IMPL(specgate, CUDA)``). Built only
  where torch has CUDA and ``nvcc`` is found; sm_90 by default (``TORCH_CUDA_ARCH_LIST``
  overrides).

The build directory is ``$SPECGATE_BUILD_DIR`` or ``~/.cache/specgate/ops/``, one folder per torch
version, Python, library and installed copy of specgate (``build_dir``);
ninja rebuilds only what changed, so after the first build a load takes well under a second.
Prebuild with ``python -m cuda_ext.build``.

A failed build is logged with the compiler's output. ``SPECGATE_REQUIRE_OP=cpu`` (or ``cuda``)
makes a failed or missing build of that library an ``OpBuildError`` wherever the op is asked
for (importing ``cuda_ext``, the kernel suite's default, refserver's ``auto``); CI sets it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ["ngram_cpu.cpp"]
CUDA_SOURCES = ["ngram_cuda.cpp", "ngram_cuda_kernel.cu"]
# -fopenmp: at::parallel_for is an OpenMP pragma inlined from ATen's headers; without the flag
# a kernel's parallel_for silently runs on one thread. Only compiled, not linked: the GOMP symbols
# resolve to the libgomp torch already loaded (libtorch_cpu's), so there is one OpenMP runtime
# and torch.set_num_threads governs it.
CPU_FLAGS = ["-O3", "-fopenmp"]
CUDA_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]


@dataclass
class BuildResult:
    """Outcome of one library build: the loaded path, or why it is not available."""

    ok: bool
    detail: str


_results: dict[str, BuildResult] = {}
REQUIRE_ENV = "SPECGATE_REQUIRE_OP"


class OpBuildError(RuntimeError):
    """The op is required (SPECGATE_REQUIRE_OP) but its build failed or is missing."""


def required_op() -> str | None:
    """ "cpu" or "cuda" when SPECGATE_REQUIRE_OP asks for that build, else None."""
    value = os.environ.get(REQUIRE_ENV, "").strip()
    if value in ("", "0", "none"):
        return None
    if value not in ("cpu", "cuda"):
        raise OpBuildError(f"{REQUIRE_ENV}={value!r}: expected 'cpu' or 'cuda' (or unset)")
    return value


def _enforce(kind: str, result: BuildResult) -> BuildResult:
    """Raise when SPECGATE_REQUIRE_OP asks for this library (cuda implies cpu) and it failed."""
    wanted = required_op()
    if not result.ok and wanted is not None and (kind == "cpu" or wanted == "cuda"):
        raise OpBuildError(f"{REQUIRE_ENV}={wanted}: the op's {kind} library: {result.detail}")
    return result


def build_dir(kind: str) -> Path:
    """Cache folder per torch version, Python, library kind and installed copy of specgate.

    The torch version, so a torch upgrade never loads a stale library. The copy (a hash of the
    folder holding cuda_ext), so two checkouts, or a wheel install beside a checkout, never
    build over each other's library: ninja would rebuild for each in turn, and a process could
    load the other copy's build between its own build and its load.
    """
    root = os.environ.get("SPECGATE_BUILD_DIR") or str(Path.home() / ".cache" / "specgate" / "ops")
    copy = hashlib.sha1(str(CSRC.parent.parent).encode()).hexdigest()[:8]
    tag = f"{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{kind}-{copy}"
    path = Path(root) / tag.replace("+", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ensure_ninja_on_path() -> None:
    """cpp_extension calls `ninja` by name; the venv's ninja is next to the interpreter."""
    venv_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and (Path(venv_bin) / "ninja").exists():
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")


def _load(
    name: str, sources: list[str], cuda: bool, verbose: bool, csrc: Path = CSRC, kind: str = ""
) -> None:
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    kwargs = {}
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        kwargs["extra_cuda_cflags"] = CUDA_FLAGS
    cpp_extension.load(
        name=name,
        sources=[str(csrc / s) for s in sources],
        extra_cflags=CPU_FLAGS,
        extra_include_paths=[str(csrc)],
        build_directory=str(build_dir(kind or ("cuda" if cuda else "cpu"))),
        with_cuda=cuda,
        is_python_module=False,
        verbose=verbose,
    )


def ensure_cpu(verbose: bool = False) -> BuildResult:
    """Build/load the schema and the CPU kernel once per process."""
    return _enforce(
        "cpu", ensure_cpu_library("cpu", CSRC, CPU_SOURCES, "specgate_ops_cpu", verbose)
    )


def ensure_cpu_library(
    kind: str, csrc: Path, sources: list[str], name: str | None = None, verbose: bool = False
) -> BuildResult:
    """Build/load one CPU library once per process: the op's (`ensure_cpu`) or another one of
    this project's (refserver's kernels: `kind` names its build folder, `name` the library,
    default `kind`). Same flags and cache root. A failure is logged and returned, never raised:
    SPECGATE_REQUIRE_OP governs the op only, other callers decide what a failure means."""
    if kind not in _results:
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            _results[kind] = BuildResult(False, "no C++ compiler found (set CXX or install g++)")
        else:
            try:
                _load(name or kind, sources, cuda=False, verbose=verbose, csrc=csrc, kind=kind)
                _results[kind] = BuildResult(True, f"built in {build_dir(kind)}")
            except Exception as exc:  # a failed compile must not break importing the caller
                label = "CPU" if kind == "cpu" else kind
                _results[kind] = BuildResult(False, f"{label} build failed: {exc}")
                log.warning("specgate: %s", _results[kind].detail)
    return _results[kind]


def ensure_cuda(verbose: bool = False) -> BuildResult:
    """Build/load the CUDA kernel (after the CPU library, which defines the schema)."""
    if "cuda" not in _results:
        cpu = ensure_cpu(verbose)
        if not cpu.ok:
            _results["cuda"] = BuildResult(False, f"CPU library unavailable: {cpu.detail}")
        elif torch.version.cuda is None:
            _results["cuda"] = BuildResult(
                False, f"this torch ({torch.__version__}) is built without CUDA"
            )
        elif not torch.cuda.is_available():
            _results["cuda"] = BuildResult(False, "no CUDA device is visible")
        else:
            from torch.utils.cpp_extension import CUDA_HOME

            if CUDA_HOME is None and shutil.which("nvcc") is None:
                _results["cuda"] = BuildResult(False, "nvcc not found (set CUDA_HOME)")
            else:
                try:
                    _load("specgate_ops_cuda", CUDA_SOURCES, cuda=True, verbose=verbose)
                    _results["cuda"] = BuildResult(True, f"built in {build_dir('cuda')}")
                except Exception as exc:
                    _results["cuda"] = BuildResult(False, f"CUDA build failed: {exc}")
                    log.warning("specgate op: %s", _results["cuda"].detail)
    return _enforce("cuda", _results["cuda"])


def main() -> int:
    """Prebuild: `python -m cuda_ext.build [--verbose]`. Exit 1 if the CPU part fails."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    verbose = "--verbose" in sys.argv
    try:
        cpu = ensure_cpu(verbose)
        log.info("cpu : %s", "ok, " + cpu.detail if cpu.ok else "NOT AVAILABLE: " + cpu.detail)
        cuda = ensure_cuda(verbose)
    except OpBuildError as exc:
        log.error("%s", exc)
        return 1
    log.info("cuda: %s", "ok, " + cuda.detail if cuda.ok else "not built: " + cuda.detail)
    return 0 if cpu.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
