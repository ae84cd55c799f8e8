#!/usr/bin/env bash
# Issue 14's measures on one 2-GPU machine (nvidia-h200-x2, lent again in session 17, counted at full rate):
# whole full-length NFE-2 trials an hour on 1 GPU and on 2 at their steady rate (bench_trials: three groups of three
# a worker, so the steady rate rests on two groups; the studies come back with each trial's train_time_s and
# wall_time_s), then what the CUDA-graph fallback costs (bench_fallback) with the minutes left. call-11.sh planned
# the same with PD's confirmation after it (done since, sessions 14-15); call-17.sh is the one-GPU version. Session
# 11 measured x1.47 on two GPUs with two groups a worker, the first paying each worker's start-up, and each worker
# pinning its own copy of the bank (banks are mapped from the page cache since session 16: one copy a machine).
# Ran in session 17 with MINUTES=22 (the first machine's chain had started without its data): 103.9 steady trials an
# hour on one GPU and 206.2 on two (results/fmnist-campaign/bench-trials-session17/); bench_fallback was stopped
# while compiling, 3.5 minutes in.
# Here first: `bash scripts/gpu/prepare.sh` (no run folder: these benchmarks use scratch studies).
# Call 1 (carry .gpu/p2 .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank, the one bank every trial of
# bench_trials reads, in two halves, one on each GPU (219 s whole on one H200 in session 11), and the monitor:
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh /tmp/bd/out/monitor 20
#   bash scripts/gpu/bg.sh start b0 python scripts/gpu/banks.py --bank 2:full:0:1/2 -- $T --device cuda:0
#   bash scripts/gpu/bg.sh start b1 python scripts/gpu/banks.py --bank 2:full:0:2/2 -- $T --device cuda:1
# Calls 2-6 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5, .gpu/p6 (`source scripts/gpu/stage.sh` alone; a compile cache
# brought back, .gpu/compile, in a call of its own before call 1); the last one starts this chain, MINUTES from the
# lease's budget_left_s less about three minutes:
#   MINUTES=27 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-19.sh
# Send calls 1-5 and all the waiting calls in ONE message (the machine goes back 30 s after a call ends). Each
# waiting call (timeout_s 590) polls and brings back what stands:
#   for i in $(seq 1 113); do [ -f /tmp/bd/out/final/done ] && break; sleep 5; done
#   cp /tmp/bd/out/*.json /tmp/bd/out/*.log /tmp/bd/jobs/*.log $OUT/ 2>/dev/null
#   tar -czf $OUT/tr.tgz --exclude mlartifacts --exclude cache -C /tmp/bd/out tr monitor 2>/dev/null; bash scripts/gpu/bg.sh status all
# and the last one also the compile cache the processes saved as they exited (see call-18.sh).
# Plan (H200 times of session 11): the bank about 2.5 minutes after call 1 (each GPU solves half and compiles the
# sampler once); setup 1 (one worker, 9 trials, the first group compiling cold) about 7 minutes; setup 2 (two
# workers, 18 trials, from the warm cache) about 7 minutes if it scales; bench_fallback with 4 minutes or more left.
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane; Ctrl-C, threads; stage.sh's environment
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
D=/tmp/bd/out
mkdir -p $D/final
need_assets
bash scripts/gpu/bg.sh wait b0 600; bash scripts/gpu/bg.sh wait b1 300
echo "call-19.sh: bench_trials from $(date -u +%H:%M:%S)"
BDENSE_STACKS_EVERY=60 timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_trials.py --no-warm-up \
  --setup 1:cuda:0 --setup 2:cuda:0,cuda:1 --trials 9 --runs-dir $D/tr --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
grep -h "without CUDA graphs" $D/tr/logs/*.log 2>/dev/null | head -3
if [ "$(left)" -ge 4 ]; then
  echo "call-19.sh: bench_fallback from $(date -u +%H:%M:%S)"
  timeout --signal=INT $(( $(lane) * 60 )) python benchmarks/bench_fallback.py --device cuda:0 --out $D/fallback.json 2>&1 \
    | grep -v -i warn | tee $D/fallback.log
fi
touch $D/final/done
echo "call-19.sh: done at $(date -u +%H:%M:%S)"
