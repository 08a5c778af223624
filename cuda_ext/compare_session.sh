#!/usr/bin/env bash
# One device call for a kernel attempt (issue 15): the full gpu_session.sh on this tree's kernel,
# gated on the op tests, then the same sweep for a reference kernel built from REF_SRC (a folder
# holding ngram_cuda_kernel.cu, ngram_cuda.cpp, ngram_cuda.h, e.g. the previous version), so both
# sweeps come from one machine in one call.
#   REF_SRC=path/to/v3 bash cuda_ext/compare_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
STAGES="build tests" bash cuda_ext/gpu_session.sh
if ! grep -q "^rc=0" "$OUT/tests.log"; then
  echo "op tests failed: stopping before the suite" | tee -a "$OUT/summary.txt"
  grep -E "FAILED|Error|error" "$OUT/tests.log" | head -30 >> "$OUT/summary.txt"
  exit 1
fi
mv "$OUT/summary.txt" "$OUT/summary_build.txt"
STAGES="suite sanitize bench bytes" bash cuda_ext/gpu_session.sh
cat "$OUT/summary_build.txt" "$OUT/summary.txt" > "$OUT/s.txt" && mv "$OUT/s.txt" "$OUT/summary.txt"
rm -f "$OUT/summary_build.txt"
if [ -n "${REF_SRC:-}" ]; then
  echo "=== $(date -u +%T) reference kernel from $REF_SRC: build and sweep" | tee -a "$OUT/summary.txt"
  ref=/tmp/ref_tree; rm -rf "$ref"; mkdir -p "$ref"
  cp -r . "$ref"
  cp "$REF_SRC"/ngram_cuda_kernel.cu "$REF_SRC"/ngram_cuda.cpp "$REF_SRC"/ngram_cuda.h "$ref/cuda_ext/csrc/"
  (cd "$ref" && SPECGATE_BUILD_DIR=/tmp/ref-build PYTHONPATH=. python3 -m cuda_ext.build > "$OUT/ref_build.log" 2>&1
   tail -1 "$OUT/ref_build.log" | tee -a "$OUT/summary.txt"
   SPECGATE_BUILD_DIR=/tmp/ref-build PYTHONPATH=. timeout ${BENCH_TIMEOUT:-300} python3 -m benchmarks.op_sweep --out "$OUT/bench_ref.md" > "$OUT/bench_ref.log" 2>&1
   echo "rc=$?" >> "$OUT/bench_ref.log"; grep -E "^card|baseline/impl|not timed|rc=" "$OUT/bench_ref.log" | tee -a "$OUT/summary.txt")
fi
echo "=== $(date -u +%T) done" | tee -a "$OUT/summary.txt"
# At most 8 files come back from the device: the tables and the summary as they are, logs packed.
(cd "$OUT" && tar -czf logs.tgz --remove-files *.log 2>/dev/null)
