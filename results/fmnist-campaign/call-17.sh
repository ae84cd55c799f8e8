#!/usr/bin/env bash
# The next chain on one H200 (nvidia-h200; planned, not run yet): issue 14's whole full-length trials an hour on that
# GPU (bench_trials, which failed in session 15 at its first group with torch's CUDA-graph-tree error,
# pytorch/pytorch#154306: a group now trains again without CUDA graphs when that error comes before any record), then
# what that fallback costs (bench_fallback: the campaign's SFD step and PD's update, CUDA graphs against mode
# 'default', each row printed as it is measured; its first run compiled for its whole 300 s and printed nothing).
# Session 15 ran call-16.sh (PD's state distance, done); seed 0's full-length NFE-2 bank took 304 s there beside PD.
# Here first: `bash scripts/gpu/prepare.sh` (no run folder needed: these benchmarks use scratch studies).
# Call 1 (carry .gpu/p2 .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank, solved while the rest is staged:
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 2:full:0 -- $T --device cuda:0
# Calls 2-6 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5, .gpu/p6 (`source scripts/gpu/stage.sh` alone); the last one starts this
# chain, MINUTES from the lease's budget_left_s less about three minutes:
#   MINUTES=25 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-17.sh
# Send calls 1-5 and all the waiting calls in ONE message (the machine goes back 30 s after a call ends). Each
# waiting call (timeout_s 590) polls, so the last one returns as soon as the chain is done:
#   for i in $(seq 1 115); do [ -f /tmp/bd/out/final/done ] && break; sleep 5; done
#   cp /tmp/bd/out/*.json /tmp/bd/out/*.log /tmp/bd/jobs/*.log $OUT/ 2>/dev/null
#   tar -czf $OUT/tr.tgz --exclude mlartifacts --exclude cache -C /tmp/bd/out tr 2>/dev/null; bash scripts/gpu/bg.sh status all
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads; stage.sh's environment
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
D=/tmp/bd/out
mkdir -p $D/final
bash scripts/gpu/bg.sh wait b0 600
echo "call-17.sh: bench_trials from $(date -u +%H:%M:%S)"
BDENSE_STACKS_EVERY=60 timeout --signal=INT $(( $(lane) * 60 - 240 )) python benchmarks/bench_trials.py --no-warm-up \
  --setup 1:cuda:0 --trials 6 --runs-dir $D/tr --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
grep -h "without CUDA graphs" $D/tr/logs/*.log 2>/dev/null | head -3
echo "call-17.sh: bench_fallback from $(date -u +%H:%M:%S)"
timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_fallback.py --out $D/fallback.json 2>&1 \
  | grep -v -i warn | tee $D/fallback.log
touch $D/final/done
echo "call-17.sh: done at $(date -u +%H:%M:%S)"
