#!/usr/bin/env bash
# Session 12's chain on one H200 (nvidia-h200, the only kind lent that day): issue 14's whole full-length trials an
# hour on one GPU at their steady rate, then PD (issue 13) with both distances at once on the same GPU with what is
# left. As it ran (log: call-13.log): the bank in 238 s; bench_trials.py stopped at once (`import optuna`: the call
# that started the chain had run `source scripts/gpu/stage.sh 2>&1 | tail -1`, a pipeline, so the chain inherited no
# PYTHONPATH; deadline.sh now sources stage.sh itself); PD then had 20 minutes: both screens and the best a's three
# full-length seeds of each distance (report-pd-x-2026-11-29/, report-pd-state-2026-11-29/). Session 11 (call-10.sh) measured 94.3 trials/h on one H200 over two groups of three a worker; its studies,
# with each trial's train_time_s and wall_time_s and the worker's pace lines, were lost with bench_trials' temporary
# folder. Here the worker trains four groups of three (12 trials), bench_trials prints the steady rate beside the
# span's, and the study, its worker log (pace lines; every thread's stack once a minute) and trials come back.
# Here first: `bash scripts/gpu/prepare.sh`, then the campaign's run folder from the published report (PD's
# studies join it):
#   python -m study.rebuild results/fmnist-campaign/report-2026-11-27 --runs-dir /tmp/runs
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank, the one bank
# every bench_trials trial reads (219 s on one H200 in session 11):
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 2:full:0 -- $T --device cuda:0
# Calls 2-5 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5; the last one starts this chain, MINUTES from the lease's
# budget_left_s less two minutes for the last call's transfer:
#   MINUTES=24 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-13.sh
# and every later call, sent at once after the one before, waits and brings back what stands:
#   sleep 540; cp /tmp/bd/jobs/*.log /tmp/bd/out/*.json /tmp/bd/out/*.log $OUT/ 2>/dev/null
#   tar -czf $OUT/tr.tgz --exclude mlartifacts -C /tmp/bd/out tr 2>/dev/null
#   bash scripts/gpu/pack.sh /tmp/bd/runs $OUT 2>/dev/null; bash scripts/gpu/bg.sh status all
# until /tmp/bd/out/final/runs.tgz.sha256 is there (the last call copies /tmp/bd/out/final/* instead).
# Plan (H200 times of session 11): the bank ready about 4 minutes after call 1; bench_trials about 9 minutes (one
# worker, 12 trials, the first group compiling cold); then PD, x and state distances, one study each on the one
# GPU: 12 screen trials each (3 rounds of 150 updates), then the best a and both baselines at 1,000 updates a
# round on seeds 1000-1002, as far as the time goes (finished trials are kept; the rest resume next session).
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/pd $D/final
bash scripts/gpu/bg.sh wait b0 900
echo "call-13.sh: bench_trials from $(date -u +%H:%M:%S)"
BDENSE_STACKS_EVERY=60 timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_trials.py --no-warm-up \
  --setup 1:cuda:0 --trials 12 --runs-dir $D/tr --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
if [ "$(left)" -ge 6 ]; then
  echo "call-13.sh: PD (x and state distances) from $(date -u +%H:%M:%S)"
  OUT=$D/pd bash scripts/gpu/study.sh "$(lane)" -- $PD --distance x --- $PD --distance state
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack of the run folder, PD's trials in it
echo "call-13.sh: done at $(date -u +%H:%M:%S)"
