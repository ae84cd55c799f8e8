#!/usr/bin/env bash
# The NFE-3 headline at full length on one 2-GPU machine (nvidia-h200-x2, counted at full rate): uniform K = 4 and
# the confirmed best (K = 6, a = 0.972, b = 1.82), each one trial whose three students (seeds
# 1000-1002) train together as one batched model, each from its own bank of 200,064 paths. K = 1 ran in session 16
# on one H200 (call-18.sh) and is in report-sfd-2026-11-29, so the resumed command queues only these two: one a GPU.
# Ran in session 18 with MINUTES=26 and no compile cache (log: call-12.log): banks 315 and 321 s, seed 1002's halves
# 140 and 174 s (ready 8.5 minutes after call 1); both trials complete in 12:44 (best K = 6: 295 s on cuda:1; uniform
# K = 4: 684 s on cuda:0, where torch's CUDA-graph error came about 140 iterations in and the fallback trained it
# again at 238-254 ms an iteration against 92-97 ms with CUDA graphs); the chain ended with 6 minutes left, too few
# for bench_fallback.
# Sessions 6-9 ran NFE 3 on 4x H100 and lost it (the machine, or the time); since session 16 the banks (14.1 GiB
# each) are mapped from their files, one copy in the page cache for both workers, and each group copies only the
# points its students need to its GPU.
# Here first: `bash scripts/gpu/prepare.sh`, then the run folder from the published reports:
#   for r in report-sfd-2026-11-29 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 0, where .gpu/compile/compile.tgz is here (an earlier machine's compile cache): carry .gpu/compile alone.
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): the three banks on the two GPUs, seed 1002's in two
# halves, one on each GPU after its own bank (`banks.py --bank NFE:LENGTH:SEED:I/M`; the half that ends last joins
# them). On one H200 a NFE-3 bank took 283-348 s (session 16), so the banks are ready about 8 minutes after call 1.
# And the monitor:
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh /tmp/bd/out/monitor 20
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 3:full:1000 --bank 3:full:1002:1/2 -- $O --device cuda:0
#   bash scripts/gpu/bg.sh start b1 python scripts/gpu/banks.py --bank 3:full:1001 --bank 3:full:1002:2/2 -- $O --device cuda:1
# Calls 2-6 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5, .gpu/p6 (`source scripts/gpu/stage.sh` alone); the last one
# starts this chain, MINUTES from the lease's budget_left_s less about three minutes:
#   MINUTES=27 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-12.sh
# Send every call in ONE message (the machine goes back 30 s after a call ends). Each waiting call (timeout_s 590)
# polls and brings back what stands (the finished pack once there):
#   for i in $(seq 1 113); do [ -f /tmp/bd/out/final/runs.tgz.sha256 ] && break; sleep 5; done
#   if [ -f /tmp/bd/out/final/runs.tgz.sha256 ]; then cp /tmp/bd/out/final/* $OUT/; else bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; fi
#   tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log /tmp/bd/out/*/*.log /tmp/bd/out/monitor* /tmp/bd/runs/logs 2>/dev/null; bash scripts/gpu/bg.sh status all
# Plan: the study starts once both bank jobs have ended (a worker started before seed 1002's halves are joined
# would solve that bank on its own); each worker compiles its step (about 2 minutes) and trains its trial (session
# 16, one H200: 90.7-92.3 ms an iteration for three NFE-3 students, about 142 s, and 11 s of scoring); then, with
# 10 minutes or more left, issue 14's last measure, what the CUDA-graph fallback costs (bench_fallback on cuda:0).
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads; stage.sh's environment
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
need_assets
mkdir -p $D/nfe3 $D/final
bash scripts/gpu/bg.sh wait b0 1500; bash scripts/gpu/bg.sh wait b1 600
echo "call-12.sh: banks done, the study from $(date -u +%H:%M:%S)"
BDENSE_STACKS_EVERY=60 OUT=$D/nfe3 bash scripts/gpu/study.sh "$(lane)" \
  -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 --workers 2 --devices cuda:0,cuda:1
grep -h "without CUDA graphs" $D/nfe3/*.log /tmp/bd/runs/logs/*.log 2>/dev/null | head -3
if [ "$(left)" -ge 10 ]; then
  echo "call-12.sh: bench_fallback from $(date -u +%H:%M:%S)"
  timeout --signal=INT $(( ($(lane) - 1) * 60 )) python benchmarks/bench_fallback.py --device cuda:0 \
    --out $D/nfe3/fallback.json 2>&1 | grep -v -i warn | tee $D/nfe3/fallback.log
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with every trial
echo "call-12.sh: done at $(date -u +%H:%M:%S)"
