#!/usr/bin/env bash
# The NFE-3 headline at full length on ONE H200 (nvidia-h200, the only kind lent in sessions 12-16; call-12.sh is
# the same on 2x H200): K = 1, uniform K = 4 and the confirmed best (K = 6, a = 0.972, b = 1.82), each one trial
# whose three students (seeds 1000-1002) train together as one batched model, each from its own bank of 200,064
# paths. Banks are solved from their seeds, so a trial this chain does not finish runs in a later session on the
# same banks solved again; finished trials come back in the run folder's pack.
# Session 16 ran it with MINUTES=25: banks 348, 298 and 283 s, K = 1 complete, uniform K = 4 stopped at iteration
# 620 of 1,563 when the time ran out (306 s of the budget left). The two configurations it lacked ran in session 18
# on 2x H200 (call-12.sh): NFE 3 is complete; NFE 4 and 5 are call-20.sh's, on whichever machine is lent.
# Estimate (one H200): a NFE-3 bank about 285 s (session 11: NFE 2 219 s on an H200; NFE 3/NFE 2 x1.3 on the H100s,
# 383-388 s against 286-308 s), so the three banks one after another on the one GPU about 860 s; then each trial
# compiles its own step (K differs) and trains 1,563 iterations of three students (H100, session 8's benchmark:
# 50.8 ms an iteration, about 80 s).
# Here first: `bash scripts/gpu/prepare.sh`, then the run folder from the published reports:
#   for r in report-sfd-2026-11-29 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): the three banks, one after another, and the monitor:
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh /tmp/bd/out/monitor 20
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 3:full:1000 --bank 3:full:1001 \
#     --bank 3:full:1002 -- $O --device cuda:0
# Calls 2-6 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5, .gpu/p6 (`source scripts/gpu/stage.sh` alone); where an earlier machine's
# compile cache is here (.gpu/compile/compile.tgz, see stage.sh), one more call carries .gpu/compile alone. The last
# one starts this chain, MINUTES from the lease's budget_left_s less about three minutes:
#   MINUTES=27 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-18.sh
# Send calls 1-5 and all the waiting calls in ONE message (the machine goes back 30 s after a call ends). Each
# waiting call (timeout_s 590) polls and brings back what stands (the finished pack once there):
#   for i in $(seq 1 113); do [ -f /tmp/bd/out/final/runs.tgz.sha256 ] && break; sleep 5; done
#   if [ -f /tmp/bd/out/final/runs.tgz.sha256 ]; then cp /tmp/bd/out/final/* $OUT/; else bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; fi
#   tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log /tmp/bd/out/*/*.log /tmp/bd/out/monitor* /tmp/bd/runs/logs 2>/dev/null; bash scripts/gpu/bg.sh status all
# and the last one also each process's compile cache, saved as it exited (in 15 MB pieces; 8 files come back at most):
#   tar -czf /tmp/bd/compile.tgz -C /tmp/bd/compile/new . && bash scripts/gpu/bg.sh pull /tmp/bd/compile.tgz
# Here, after it: mkdir -p .gpu/compile && cat /work/.device/N/compile.tgz.part.* > .gpu/compile/compile.tgz
# (compile.tgz.sha256 checks it; a compile.tgz of 15 MB or less comes whole: copy it).
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads; stage.sh's environment
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
need_assets
mkdir -p $D/nfe3 $D/final
bash scripts/gpu/bg.sh wait b0 1500
echo "call-18.sh: banks done, the study from $(date -u +%H:%M:%S)"
BDENSE_STACKS_EVERY=60 OUT=$D/nfe3 bash scripts/gpu/study.sh "$(lane)" \
  -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 --workers 1 --device cuda:0
grep -h "without CUDA graphs" $D/nfe3/*.log /tmp/bd/runs/logs/*.log 2>/dev/null | head -3
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with every trial
echo "call-18.sh: done at $(date -u +%H:%M:%S)"
