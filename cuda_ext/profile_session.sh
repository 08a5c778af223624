#!/usr/bin/env bash
# One device call: build the op and profile the sweep points that missed their targets with ncu.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 SPECGATE_BUILD_DIR=/tmp/specgate-build
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m cuda_ext.build > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/profile.txt"
profile() {  # batch prompt generated pattern
  echo "=== point B=$1 prompt=$2 gen=$3 pattern=$4" | tee -a "$OUT/profile.txt"
  timeout 120 ncu --clock-control none -k regex:hybrid --launch-skip 3 -c 2 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \
    --section SchedulerStats --section WarpStateStats \
    python3 -m benchmarks.op_profile --batch $1 --prompt $2 --generated $3 --pattern $4 --calls 6 \
    >> "$OUT/profile.txt" 2>&1
  echo "rc=$?" >> "$OUT/profile.txt"
}
profile 256 8192 256 early
profile 64 8192 256 early
profile 1024 8192 256 none
profile 4096 1024 4096 none
grep -E "^=== point|hybrid|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Grid Size|Block Size|Waves Per SM|Stall|One or More|No Eligible|rc=" "$OUT/profile.txt" | head -150
