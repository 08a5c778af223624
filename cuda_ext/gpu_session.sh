#!/usr/bin/env bash
# One device call: build the op (and the straightforward design, the sweep's peer), run the CUDA
# tests (graph capture included), the kernel suite on CUDA, the sanitizers, the benchmark sweep
# and the ncu bytes-read table. Logs go to $OUT (at most 8 files come back).
#   STAGES="build tests suite sanitize bench bytes" bash cuda_ext/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# A build folder of its own where the caller names one: on a machine left warm by another call, the
# default folder may hold that call's build (and, if it was killed, its build lock).
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SPECGATE_BUILD_DIR=${SPECGATE_BUILD_DIR:-/tmp/specgate-build}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGES=${STAGES:-"build tests suite sanitize bench bytes"}
log() { echo "=== $(date -u +%T) $*" | tee -a "$OUT/summary.txt"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

log "host: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"
stage_build() {
  log "build"
  # the peer builds in parallel (it is only needed by the sweep)
  python3 -c "from benchmarks import straightforward as s; s._build()" > "$OUT/build_peer.log" 2>&1 &
  local peer=$!
  time python3 -m cuda_ext.build --verbose > "$OUT/build.log" 2>&1; tail -3 "$OUT/build.log" | tee -a "$OUT/summary.txt"
  wait $peer; echo "straightforward build rc=$?" | tee -a "$OUT/summary.txt"; tail -2 "$OUT/build_peer.log" >> "$OUT/summary.txt"
  cuobjdump -res-usage "$SPECGATE_BUILD_DIR"/*cuda*/specgate_ops_cuda.so 2>/dev/null | grep -A1 hybrid | tee -a "$OUT/summary.txt"
}
stage_tests() {
  log "op tests (tests/cuda_ext, cuda included)"
  timeout ${TESTS_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider tests/cuda_ext -m "not slow" -rs ${TESTS_ARGS:-} > "$OUT/tests.log" 2>&1
  echo "rc=$?" >> "$OUT/tests.log"; grep -E "passed|failed|error|rc=" "$OUT/tests.log" | tail -4 | tee -a "$OUT/summary.txt"
}
stage_suite() {
  log "kernel suite, CUDA op, profile ${SUITE_PROFILE:-full}"
  # The suite lives in specgate/kernel_suite; its options come from specgate's pytest plugin,
  # named here when specgate is not installed (a bare checkout, as on the GPU machine).
  local plugin="-p specgate.pytest_plugin"
  python3 -c "import importlib.metadata as m, sys; sys.exit(not any(e.value.startswith('specgate.pytest_plugin') for e in m.entry_points(group='pytest11')))" && plugin=""
  timeout ${SUITE_TIMEOUT:-400} python3 -m pytest -m kernel -q -p no:cacheprovider $plugin specgate/kernel_suite -n 8 \
    --kernel-device cuda --kernel-profile ${SUITE_PROFILE:-full} ${SUITE_ARGS:-} > "$OUT/suite.log" 2>&1
  echo "rc=$?" >> "$OUT/suite.log"; grep -E "kernel suite:|passed|failed|rc=" "$OUT/suite.log" | tail -4 | tee -a "$OUT/summary.txt"
}
stage_sanitize() {
  for tool in memcheck racecheck; do
    log "compute-sanitizer $tool"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool $tool --error-exitcode 9 \
      python3 -m tests.cuda_ext.sanitize_driver > "$OUT/sanitize_$tool.log" 2>&1
    echo "rc=$?" >> "$OUT/sanitize_$tool.log"; tail -4 "$OUT/sanitize_$tool.log" | tee -a "$OUT/summary.txt"
  done
}
stage_bench() {
  log "benchmark sweep"
  timeout ${BENCH_TIMEOUT:-300} python3 -m benchmarks.op_sweep ${BENCH_ARGS:-} --out "$OUT/bench.md" > "$OUT/bench.log" 2>&1
  echo "rc=$?" >> "$OUT/bench.log"; grep -E "^card|baseline/impl|behind:|not timed|rc=|Error" "$OUT/bench.log" \
    | grep -v "the design takes B <= 1024" | head -40 | tee -a "$OUT/summary.txt"  # B = 4096: no peer
}
stage_bytes() {
  log "ncu dram bytes read (op and straightforward design; early, late, none per batch size)"
  timeout ${BYTES_TIMEOUT:-200} python3 -m benchmarks.op_bytes --out "$OUT/bytes.md" > "$OUT/bytes.log" 2>&1
  echo "rc=$?" >> "$OUT/bytes.log"; cat "$OUT/bytes.log" | tee -a "$OUT/summary.txt"
}
for stage in $STAGES; do "stage_$stage"; done
log "done"
