#!/usr/bin/env bash
# The next chain on one H200 (nvidia-h200; planned, not run yet): what issue 13's PD verdict still lacks, the state
# distance's K = 1 and uniform K = 2 at 1,000 updates a round on seeds 1000-1002 (6 trials), then issue 14's whole
# full-length trials an hour on that GPU (bench_trials, which call-13.sh and call-14.sh never reached).
# Session 14 (call-14.sh, call-15.sh) finished the x distance: one full-length PD trial alone on an H200 takes
# 76.5-76.9 s, the first of a process 219-223 s (compiling), so 6 trials take about 10 minutes. In call-14.sh the
# uniform K = 2 trials failed with torch's cudagraph-tree error (pytorch/pytorch#154306) in the process that had just
# run K = 1's three; a fresh process ran them (call-15.sh). So the study runs up to twice here: the confirmation
# re-enqueues a failed (configuration, seed), and a second process starts with what the first could not do.
# Here first: `bash scripts/gpu/prepare.sh`, then the campaign's run folder from the published reports:
#   for r in report-2026-11-27 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank for bench_trials,
# solved while the rest is staged and while PD trains (238 and 278 s alone on one H200 in sessions 12 and 14):
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 2:full:0 -- $T --device cuda:0
# Calls 2-5 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5 (`source scripts/gpu/stage.sh` alone); the last one starts this
# chain, MINUTES from the lease's budget_left_s less about three minutes:
#   MINUTES=25 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-16.sh
# Send calls 1-5 and all the waiting calls in ONE message: the machine goes back 30 s after a call ends, and in
# session 14 reading one call's logs before sending the next lost the machine and everything on it. Each waiting
# call (timeout_s 600) polls, so the last one returns as soon as the chain is done:
#   for i in $(seq 1 115); do [ -f /tmp/bd/out/final/runs.tgz.sha256 ] && break; sleep 5; done
#   cp /tmp/bd/out/final/* /tmp/bd/jobs/*.log /tmp/bd/out/*.json /tmp/bd/out/*.log $OUT/ 2>/dev/null
#   tar -czf $OUT/tr.tgz --exclude mlartifacts -C /tmp/bd/out tr 2>/dev/null
#   [ -f $OUT/runs.tgz.sha256 ] || bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; bash scripts/gpu/bg.sh status all
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads; stage.sh's environment
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 0 --confirm-top 1 --confirm-seeds 3"  # the confirmation only
D=/tmp/bd/out
mkdir -p $D/pd/state $D/final
for attempt in 1 2; do  # a second process only if the first left (configuration, seed) pairs undone
  [ "$(left)" -ge 9 ] || break
  echo "call-16.sh: PD's confirmation, state distance, process $attempt, from $(date -u +%H:%M:%S)"
  BDENSE_STACKS_EVERY=60 OUT=$D/pd/state bash scripts/gpu/study.sh "$(( $(left) - 8 ))" -- $PD --distance state
  cp $D/pd/state/study-1.log $D/pd-state-process-$attempt.log
  grep -q "this command: 0 complete" $D/pd/state/study-1.log && break  # nothing ran: a second try would not either
  grep -q "failed in a row; stopped" $D/pd/state/study-1.log || break
done
bash scripts/gpu/bg.sh wait b0 600
if [ "$(left)" -ge 6 ]; then
  echo "call-16.sh: bench_trials from $(date -u +%H:%M:%S)"
  BDENSE_STACKS_EVERY=60 timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_trials.py --no-warm-up \
    --setup 1:cuda:0 --trials 6 --runs-dir $D/tr --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack of the run folder, PD's trials in it
echo "call-16.sh: done at $(date -u +%H:%M:%S)"
