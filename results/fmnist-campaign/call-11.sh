#!/usr/bin/env bash
# Superseded by call-19.sh, which ran its bench_trials part in session 17 (its PD part ran in sessions 14 and 15).
# The next session's chain on one 2-GPU machine (nvidia-h200-x2, counted at full rate; planned, not run yet):
# issue 14's whole full-length trials an hour on 1 GPU and on 2 at their steady rate, then PD's full-length
# baselines (issue 13), one distance on each GPU, with what is left. Session 11 (call-10.sh) measured 94.3 trials/h on one H200 and x1.47
# on two, each worker training only two groups of three, the first of which paid the worker's start-up; its
# studies' own timings were lost with bench_trials' temporary folder. Here each worker trains four groups,
# bench_trials prints the steady rate (after every worker's first group) beside the span's, and the studies,
# with each trial's train_time_s and wall_time_s, come back.
# Here first: `bash scripts/gpu/prepare.sh`, then the campaign's run folder from the published report (PD's study
# joins it):
#   for r in report-2026-11-27 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank, the one bank every
# bench_trials trial reads, in two halves, one on each GPU (219 s whole on one H200 in session 11):
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 2:full:0:1/2 -- $T --device cuda:0
#   bash scripts/gpu/bg.sh start b1 python scripts/gpu/banks.py --bank 2:full:0:2/2 -- $T --device cuda:1
# Calls 2-5 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5; the last one starts this chain:
#   MINUTES=26 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-11.sh
# and every later call, sent at once after the one before, waits and brings back what stands:
#   sleep 540; cp /tmp/bd/jobs/*.log /tmp/bd/out/*.json /tmp/bd/out/*.log $OUT/ 2>/dev/null
#   tar -czf $OUT/tr.tgz --exclude mlartifacts -C /tmp/bd/out tr 2>/dev/null
#   bash scripts/gpu/pack.sh /tmp/bd/runs $OUT 2>/dev/null; bash scripts/gpu/bg.sh status all
# until /tmp/bd/out/final/runs.tgz.sha256 is there (the last call copies /tmp/bd/out/final/* instead).
# Plan (H200 times of session 11): the bank ready about 2.5 minutes after call 1 (each GPU solves half the paths
# and compiles once); bench_trials about 11 minutes (setup 1: one worker, 12 trials, the first group compiling
# cold; setup 2: two workers, 24 trials, from the warm cache);
# then, with 8 minutes or more left, PD's confirmation (session 12 ran both distances' screens and the best a's three
# seeds): K = 1 and uniform K = 2 at 1,000 updates a round on seeds 1000-1002, the x distance on cuda:0 and the
# state distance on cuda:1 (6 trials each, about 100 s a trial alone on a GPU), as far as the time goes.
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 0 --confirm-top 1 --confirm-seeds 3"  # screens done (session 12): the confirmation only
D=/tmp/bd/out
mkdir -p $D/pdx $D/final
bash scripts/gpu/bg.sh wait b0 900; bash scripts/gpu/bg.sh wait b1 600
echo "call-11.sh: bench_trials from $(date -u +%H:%M:%S)"
timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_trials.py --no-warm-up --setup 1:cuda:0 \
  --setup 2:cuda:0,cuda:1 --trials 12 --runs-dir $D/tr --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
if [ "$(left)" -ge 8 ]; then
  echo "call-11.sh: PD's confirmation (x on cuda:0, state on cuda:1) from $(date -u +%H:%M:%S)"
  BDENSE_STACKS_EVERY=60 OUT=$D/pdx bash scripts/gpu/study.sh "$(lane)" -- $PD --distance x --device cuda:0 --- $PD --distance state --device cuda:1
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack of the run folder, PD's trials in it
echo "call-11.sh: done at $(date -u +%H:%M:%S)"
