#!/usr/bin/env bash
# issue 15 final evidence (v12 tree): gpu_session.sh's stages, the correctness ones side by side
# (tests, suite, sanitizers: no timing), then the sweep and the ncu bytes alone.
set -uo pipefail
d=/root/i15e_$$; mkdir -p $d && tar xzf .carry/i15e/tree.tgz -C $d && cd $d
export SPECGATE_BUILD_DIR=$d.build
export OUT
STAGES=build bash cuda_ext/gpu_session.sh
STAGES=tests TESTS_ARGS=-x bash cuda_ext/gpu_session.sh > /dev/null 2>&1 &
STAGES=suite bash cuda_ext/gpu_session.sh > /dev/null 2>&1 &
(sleep 5; STAGES=sanitize bash cuda_ext/gpu_session.sh > /dev/null 2>&1) &
wait
STAGES="bench bytes" bash cuda_ext/gpu_session.sh
cd $OUT && tar czf logs.tgz *.log && rm -f *.log
