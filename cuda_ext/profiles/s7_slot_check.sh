#!/usr/bin/env bash
# issue 15, session 7: the slot layout read through key_index<kFused> everywhere (row_state, the
# finaliser's reset), and no token-word loads or resets below sm_90, where nothing writes them.
# One call, the working tree as sent: an sm_90 build (tests, full suite, memcheck, racecheck, the
# benchmark sweep, alone on the card after the checks) and an "8.0+PTX" build that the H200 runs through the driver's JIT of the
# compute_80 PTX, i.e. the pre-sm_90 path (tests, full suite, memcheck). Own build folder each.
set -uo pipefail
top=$OUT
run_set() {  # $1: name, $2: the arch list
  export OUT=$top/$1 SPECGATE_BUILD_DIR=/tmp/s7.build.$1 TORCH_CUDA_ARCH_LIST=$2; mkdir -p $OUT
  STAGES=build bash cuda_ext/gpu_session.sh > /dev/null
  cuobjdump --list-elf --list-ptx $SPECGATE_BUILD_DIR/*cuda*/specgate_ops_cuda.so >> $OUT/summary.txt 2>&1
  STAGES=tests TESTS_ARGS=-x bash cuda_ext/gpu_session.sh > /dev/null 2>&1 &
  STAGES=suite bash cuda_ext/gpu_session.sh > /dev/null 2>&1 &
  (sleep 5; STAGES=sanitize bash cuda_ext/gpu_session.sh > /dev/null 2>&1) &
  wait
}
run_set sm90 9.0 &
run_set sm80ptx "8.0+PTX" &
wait
# The sweep alone on the card, after both sets: nothing else runs on it while it times.
OUT=$top/sm90 SPECGATE_BUILD_DIR=/tmp/s7.build.sm90 TORCH_CUDA_ARCH_LIST=9.0 STAGES=bench \
  bash cuda_ext/gpu_session.sh > /dev/null 2>&1
for s in sm90 sm80ptx; do echo "##### $s"; cat $top/$s/summary.txt; done
cp $top/sm90/bench.md $top/sweep_sm90.md 2>/dev/null
cd $top && tar czf logs.tgz */*.log && rm -f */*.log
