"""The CUDA kernel compiles for every GPU generation an engine team may build it for, on a machine
without a GPU: nvcc's device pass and ptxas only, no torch headers (the kernel file includes
none). Session 6 found v12's first form failing here for sm_80 (`atom.cas.b128` needs sm_90):
a `TORCH_CUDA_ARCH_LIST=8.0` user would have got a build error where the GPU tests, run on an
H200 only, saw nothing. Which path each architecture takes is checked on the GPU (an `8.0+PTX`
build runs the pre-sm_90 path there: `cuda_ext/profiles/v12_arch_check.sh`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "cuda_ext" / "csrc"
NVCC = shutil.which("nvcc")

# A100 / A10, L40 / RTX 4090, H100 / H200, B200.
ARCHS = ("80", "89", "90", "100")


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: the offline arch compile check needs it")
@pytest.mark.parametrize("arch", ARCHS)
def test_kernel_compiles_for(arch, tmp_path):
    cmd = [NVCC, f"-arch=sm_{arch}", "-O3", "-std=c++17", f"-I{CSRC}", "-c"]
    cmd += [str(CSRC / "ngram_cuda_kernel.cu"), "-o", str(tmp_path / "k.o")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
