#!/usr/bin/env bash
# issue 15 v11 exploration: build v9 and three variants, sweep each; fused tests + sanitizers on C.
# Ran from /work/main with carry .carry/i15e (tree.tgz of the worktree with the v11 patch, v9src/ = 90f2966's
# three kernel sources, sweep_sel.py = profiles/v11_sweep_sel.py).
set -uo pipefail
C=$PWD/.carry/i15e
mkdir -p /root/t && tar xzf $C/tree.tgz -C /root/t
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
S=$OUT/summary.txt
log() { echo "=== $(date -u +%T) $*" | tee -a $S; }
log "host: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
mk() { local name=$1; shift; local d=/root/v_$name; rm -rf $d; cp -r /root/t $d
  for kv in "$@"; do local k=${kv%%=*} v=${kv#*=}
    sed -i "s/^constexpr \(bool\|int\) $k = [^;]*;/constexpr \1 $k = $v;/" $d/cuda_ext/csrc/ngram_cuda.h; done
  echo "$name: $(grep -E '^constexpr (bool|int) k(Prefetch|FusedMaxUnits)' $d/cuda_ext/csrc/ngram_cuda.h | tr '\n' ' ')" >> $S; }
mk v9; cp $C/v9src/* /root/v_v9/cuda_ext/csrc/
mk A kFusedMaxUnits=32
mk B kFusedMaxUnits=32 kPrefetchProbeTiles=2
mk C
log "build"
for n in v9 A B C; do (cd /root/v_$n && SPECGATE_BUILD_DIR=/tmp/b_$n PYTHONPATH=. python3 -m cuda_ext.build > $OUT/build_$n.log 2>&1; echo "$n build rc=$?" >> $S
  SPECGATE_BUILD_DIR=/tmp/b_$n PYTHONPATH=. python3 -c "from benchmarks import straightforward as s; s._build()" >> $OUT/build_$n.log 2>&1) & done; wait
for n in v9 A B C; do cuobjdump -res-usage /tmp/b_$n/*cuda*/specgate_ops_cuda.so 2>/dev/null | grep -A1 hybrid | grep -o "REG:[0-9]* STACK:[0-9]*" | tr '\n' ' ' | sed "s/^/$n /" >> $S; echo >> $S; done
log "C: fused tests, sanitizers"
(cd /root/v_C && SPECGATE_BUILD_DIR=/tmp/b_C PYTHONPATH=. timeout 120 python3 -m pytest -q -p no:cacheprovider tests/cuda_ext/test_op_cuda.py -k "fused or probe or graph" > $OUT/C_tests.log 2>&1; tail -2 $OUT/C_tests.log >> $S
 for tool in memcheck racecheck; do SPECGATE_BUILD_DIR=/tmp/b_C PYTHONPATH=. PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 python3 -m tests.cuda_ext.sanitize_driver > $OUT/C_$tool.log 2>&1; echo "$tool rc=$?" >> $S; tail -3 $OUT/C_$tool.log >> $S; done)
for spec in "v9 all" "A all" "B nob1" "C small"; do set -- $spec
  log "sweep $1 ($2)"
  (cd /root/v_$1 && SPECGATE_BUILD_DIR=/tmp/b_$1 PYTHONPATH=. timeout 150 python3 $C/sweep_sel.py $2 $OUT/sweep_$1.md > $OUT/sweep_$1.log 2>&1)
  grep -E "^card|baseline/impl|behind:|not timed" $OUT/sweep_$1.log | tee -a $S
done
log done
cd $OUT && tar czf logs.tgz *.log && rm -f *.log
