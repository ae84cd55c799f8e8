#!/usr/bin/env bash
# Issue 14's measurements on one 2-GPU machine (nvidia-h200-x2, counted at full rate), session 11: whole full-length
# trials an hour on 1 GPU and on 2 (benchmarks/bench_trials.py), after bench_core.py ran alone on its GPU.
# No study of the campaign runs beside them, so no run folder travels.
# Call 1 (carry .gpu/p2 .gpu/SHA256SUMS .gpu/pieces): seed 0's full-length NFE-2 bank on cuda:0, the one bank every
# bench_trials trial reads (banks.py solves it under the key the study's workers ask for), and bench_core.py on cuda:1:
#   source scripts/gpu/stage.sh; mkdir -p /tmp/bd/out; export BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1
#   T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
#   bash scripts/gpu/bg.sh start bank python scripts/gpu/banks.py --bank 2:full:0 -- $T --device cuda:0
#   bash scripts/gpu/bg.sh start core python benchmarks/bench_core.py --device cuda:1 --no-check --students 1 3 \
#     --profile 15 --out /tmp/bd/out/core.json
# Calls 2-5 stage .gpu/p1 (the data: bench_core's PD row and the FID statistics need it), .gpu/p3, .gpu/p4, .gpu/p5
# (the Inception: bench_core's FID row comes last); the last one starts this chain:
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-10.sh
# and every later call waits, then copies back what stands:
#   sleep 540; cp /tmp/bd/jobs/*.log /tmp/bd/out/*.json /tmp/bd/out/*.log $OUT/ 2>/dev/null; bash scripts/gpu/bg.sh status all
# bench_trials starts when the bank is solved and bench_core has ended (a benchmark that shares the host with
# another measures both badly: session 8). Its setups, one after the other in one run: 1 worker on cuda:0, then
# 2 workers on cuda:0 and cuda:1; each worker trains 6 trials, 3 students at a time (the campaign's shape: NFE 2,
# S = 24, batch 128, 1,563 iterations, 10k-sample FID each). Its warm-up trains one group of 3 first, so the
# setups find the teacher, the bank, the FID statistics and the compiled kernels in the caches.
set -uo pipefail
trap 'exit 130' INT
export BDENSE_NUM_THREADS=${BDENSE_NUM_THREADS:-2} PYTHONUNBUFFERED=1
T="--preset fmnist-gpu --length full --k 2 3 4 6 8 --students-per-worker 3"
D=/tmp/bd/out
mkdir -p $D
bash scripts/gpu/bg.sh wait bank 1200
bash scripts/gpu/bg.sh wait core 1200
echo "call-10.sh: bench_trials from $(date -u +%H:%M:%S)"
timeout --signal=INT ${TRIALS_SECONDS:-1000} python benchmarks/bench_trials.py --setup 1:cuda:0 \
  --setup 2:cuda:0,cuda:1 --trials 6 --out $D/trials.json -- $T 2>&1 | tee $D/trials.log
echo "call-10.sh: done at $(date -u +%H:%M:%S)"
