#!/usr/bin/env bash
# The NFE-3 headline at full length on one 2-GPU machine (nvidia-h200-x2, counted at full rate; planned, not run
# yet): K = 1, uniform K = 4 and the confirmed best (K = 6, a = 0.972, b = 1.82), each one trial whose three
# students (seeds 1000-1002) train together as one batched model, each from its own bank of 200,064 paths.
# Sessions 6-9 ran it on 4x H100 and lost it (the machine, or the time: session 8's workers trained at 11 s an
# iteration); the banks (14.1 GiB each) live in pinned host memory, and each group now copies only the points its
# students need to its GPU (sfd.banks_for_device; session 10: host 102 ms, subset 102 ms an iteration).
# Here first: `bash scripts/gpu/prepare.sh`, then the run folder from the published report:
#   for r in report-2026-11-27 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): the three banks on the two GPUs, seed 1002's in two
# halves, one on each GPU after its own bank (`banks.py --bank NFE:LENGTH:SEED:I/M`; the half that ends last joins
# them). NFE 3, estimated from session 11's 219 s at NFE 2 (48 against 72 steps): about 330 s a bank on an H200,
# so the banks are ready about 8 minutes after call 1 instead of 10 with seed 1002 whole on cuda:0. And the monitor:
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh /tmp/bd/out/monitor 20
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 3:full:1000 --bank 3:full:1002:1/2 -- $O --device cuda:0
#   bash scripts/gpu/bg.sh start b1 python scripts/gpu/banks.py --bank 3:full:1001 --bank 3:full:1002:2/2 -- $O --device cuda:1
# Calls 2-6 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5, .gpu/p6 (six parts since session 17); the last one starts this chain:
#   MINUTES=26 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-12.sh
# and every later call, sent at once after the one before, waits and brings back what stands:
#   sleep 540; bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log \
#     /tmp/bd/out/*/*.log /tmp/bd/runs/logs 2>/dev/null; bash scripts/gpu/bg.sh status all
# until /tmp/bd/out/final/runs.tgz.sha256 is there (the last call copies /tmp/bd/out/final/* instead).
# Plan: the study starts once both bank jobs have ended (a worker started before seed 1002's halves are joined
# would solve that bank on its own); each worker loads the three banks, compiles and trains (session 8's benchmark, H100: 50.8 ms an
# iteration for three students at NFE 3, so about 80 s of training a trial), the first free worker takes the third
# trial; then, with 8 minutes or more left, what PD's confirmation still lacks (x on cuda:0, state on cuda:1).
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 0 --confirm-top 1 --confirm-seeds 3"  # screens done (session 12): the confirmation only
D=/tmp/bd/out
need_assets
mkdir -p $D/nfe3 $D/pds $D/final
bash scripts/gpu/bg.sh wait b0 1500; bash scripts/gpu/bg.sh wait b1 600
BDENSE_STACKS_EVERY=60 OUT=$D/nfe3 bash scripts/gpu/study.sh "$(lane)" \
  -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 --workers 2 --devices cuda:0,cuda:1
if [ "$(left)" -ge 8 ]; then
  OUT=$D/pds bash scripts/gpu/study.sh "$(lane)" -- $PD --distance x --device cuda:0 --- $PD --distance state --device cuda:1
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with every trial
echo "call-12.sh: done at $(date -u +%H:%M:%S)"
