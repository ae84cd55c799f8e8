#!/usr/bin/env bash
# The next chain on one H200 (nvidia-h200; planned, not run yet): PD's full-length baselines (issue 13), one
# distance after the other, then issue 14's whole full-length trials an hour on that GPU at the steady rate.
# Session 12 (call-13.sh) ran both PD screens and the best a's three full-length seeds; what is missing for a verdict
# is K = 1 and uniform K = 2 at 1,000 updates a round on seeds 1000-1002 (6 trials a distance). Its bench_trials
# stopped at `import optuna` (see call-13.sh): measured here again, after PD, with two groups of three.
# Here first: `bash scripts/gpu/prepare.sh`, then the campaign's run folder from the published reports:
#   for r in report-2026-11-27 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank for bench_trials,
# solved while the rest is staged and while PD trains (238 s alone on one H200 in session 12):
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 2:full:0 -- $T --device cuda:0
# Calls 2-5 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5 (`source scripts/gpu/stage.sh;` as a command of its own); the
# last one starts this chain, MINUTES from the lease's budget_left_s less about three minutes:
#   MINUTES=25 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-14.sh
# and every later call, sent at once after the one before, waits and brings back what stands:
#   sleep 540; cp /tmp/bd/jobs/*.log /tmp/bd/out/*.json /tmp/bd/out/*.log $OUT/ 2>/dev/null
#   for d in x state; do cp /tmp/bd/out/pd/$d/study-1.log $OUT/pd-$d.log 2>/dev/null; done
#   tar -czf $OUT/tr.tgz --exclude mlartifacts -C /tmp/bd/out tr 2>/dev/null
#   bash scripts/gpu/pack.sh /tmp/bd/runs $OUT 2>/dev/null; bash scripts/gpu/bg.sh status all
# until /tmp/bd/out/final/runs.tgz.sha256 is there (the last call copies /tmp/bd/out/final/* instead).
# Plan: in session 12 the two PD studies shared the GPU and each took about 165 s a full-length trial, where one
# alone should take about 75 s (3,000 updates at bench_core's 19.6 ms on an H200, plus three FIDs): sharing gained
# little or nothing (an estimate: PD has not run alone), and a distance whose six trials do not all finish has no
# verdict. So here one distance after the other:
# x for at most 10 minutes (about 9 expected: six trials and the start-up), then state until 8 minutes are left;
# finished trials are kept, the rest resume next session. Then bench_trials: one worker, 6 trials (two groups of
# three: the first compiles, the second is the steady rate), about 6 minutes.
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads; stage.sh's environment
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 0 --confirm-top 1 --confirm-seeds 3"  # the confirmation only
D=/tmp/bd/out
mkdir -p $D/pd/x $D/pd/state $D/final
echo "call-14.sh: PD's confirmation, x distance, from $(date -u +%H:%M:%S)"
m=$(( $(left) - 8 )); m=$(( m > 10 ? 10 : (m > 1 ? m : 1) ))
BDENSE_STACKS_EVERY=60 OUT=$D/pd/x bash scripts/gpu/study.sh "$m" -- $PD --distance x
if [ "$(left)" -ge 10 ]; then
  echo "call-14.sh: PD's confirmation, state distance, from $(date -u +%H:%M:%S)"
  BDENSE_STACKS_EVERY=60 OUT=$D/pd/state bash scripts/gpu/study.sh "$(( $(left) - 8 ))" -- $PD --distance state
fi
bash scripts/gpu/bg.sh wait b0 600
if [ "$(left)" -ge 6 ]; then
  echo "call-14.sh: bench_trials from $(date -u +%H:%M:%S)"
  BDENSE_STACKS_EVERY=60 timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_trials.py --no-warm-up \
    --setup 1:cuda:0 --trials 6 --runs-dir $D/tr --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack of the run folder, PD's trials in it
echo "call-14.sh: done at $(date -u +%H:%M:%S)"
