#!/usr/bin/env bash
# issue 15, session 6: v12 with its pre-sm_90 fallback (no 128-bit CAS: the key alone). One call:
# the sm_90 build (tests, full suite, memcheck, racecheck) and an "8.0+PTX" build, which an H200
# runs through the driver's JIT of the compute_80 PTX, i.e. the fallback path (tests, full suite,
# memcheck), both sets at once. The tree comes in .carry/i15f/tree.tgz; each build has its own folder.
set -uo pipefail
d=/root/i15f_$$; mkdir -p $d && tar xzf .carry/i15f/tree.tgz -C $d && cd $d
top=$OUT
run_set() {  # $1: name, then the arch list
  export OUT=$top/$1 SPECGATE_BUILD_DIR=$d.build.$1 TORCH_CUDA_ARCH_LIST=$2; mkdir -p $OUT
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
for s in sm90 sm80ptx; do echo "##### $s"; cat $top/$s/summary.txt; done
cd $top && tar czf logs.tgz */*.log && rm -f */*.log
