#!/usr/bin/env bash
# The campaign's fifth GPU session (one 4-GPU machine, about 19 minutes of device time left), after
# `source scripts/gpu/stage.sh`. From the first staging call, scripts/gpu/banks.py solves NFE 2's three full-length
# banks (seeds 1000-1002 on cuda:0-2) and cuda:3 runs the GPU-marked tests, then benchmarks/pd_precision.py (bg job
# "gpu"). A study that asks for a bank being solved waits for it.
# Study stages run one after another: they share one Optuna study (one journal, one MLflow store in /tmp/bd/runs)
# and a worker takes any queued trial oldest first, so two study commands at once run each other's grids (seen in
# this session's first try). Stages: the K grid at screen length with 8 seeds (Figure 4's noise band) on cuda:0-2;
# then the b ablation again (its per-seed FIDs were lost in session 4) on cuda:0-1 beside issue 14's whole trials
# per hour, 1 GPU against 2, on cuda:2-3 (seed 1000's NFE-2 bank, full length). Each stage packs the run folder into
# /tmp/bd/out/<stage>/ (complete once its runs.tgz.sha256 is there). Started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-4.sh
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/kgrid $D/abl $D/bench
OUT=$D/kgrid bash scripts/gpu/study.sh 10 -- $O --n-trials 0 --ablation k --ablation-seeds 8 --workers 3 \
  --devices cuda:0,cuda:1,cuda:2
OUT=$D/abl bash scripts/gpu/study.sh 10 -- $O --n-trials 0 --ablation b --ablation-length full --workers 2 \
  --devices cuda:0,cuda:1 &
CUDA_VISIBLE_DEVICES=2,3 BDENSE_NUM_THREADS=2 timeout 540 python benchmarks/bench_trials.py --setup 1:cuda:0 \
  --setup 2:cuda:0,cuda:1 --trials 3 --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full \
  --k 2 3 4 6 8 --seed 1000 > $D/bench/bench_trials.log 2>&1
wait
echo "call-4.sh: done"
