#!/usr/bin/env bash
# The campaign's fifth GPU session (one 4-GPU machine), after `source scripts/gpu/stage.sh`. From the first staging
# call, scripts/gpu/banks.py solves the six full-length banks this chain reads (cuda:0: NFE 3 seed 1000 then NFE 2
# seed 1001; cuda:1: NFE 3 / 1001 then NFE 2 / 1002; cuda:2: NFE 3 / 1002; cuda:3: NFE 2 / 1000), the GPU-marked
# tests run on cuda:3 and benchmarks/pd_precision.py on cuda:2 (bg jobs "gpu" and "pdp"). A study that asks for a
# bank being solved waits for it.
# The study stages run one after another, each with a worker on every GPU it names: they share one Optuna study
# (one journal, one MLflow store in /tmp/bd/runs), and a worker takes any queued trial oldest first, so two study
# commands at once would run each other's grids. Stages: the K grid at screen length with 8 seeds (Figure 4's
# noise band); the headline at NFE 3 (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002, full length) with
# benchmarks/bench_core.py alone on cuda:3 beside it (issue 14's table); the b ablation again (its per-seed FIDs
# were lost in session 4) on cuda:0-1 beside issue 14's whole trials per hour, 1 GPU against 2, on cuda:2-3 (seed
# 1000's NFE-2 bank, full length).
# Each stage packs the run folder into /tmp/bd/out/<stage>/ (complete once its runs.tgz.sha256 is there). Started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-4.sh
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/kgrid $D/core $D/nfe3 $D/abl $D/bench
OUT=$D/kgrid bash scripts/gpu/study.sh 12 -- $O --n-trials 0 --ablation k --ablation-seeds 8 --workers 4 \
  --devices cuda:0,cuda:1,cuda:2,cuda:3
BDENSE_NUM_THREADS=2 timeout 600 python benchmarks/bench_core.py --device cuda:3 --no-check --students 1 4 \
  --out $D/core/bench_core.json > $D/core/bench_core.log 2>&1 &
OUT=$D/nfe3 bash scripts/gpu/study.sh 12 -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 \
  --workers 3 --devices cuda:0,cuda:1,cuda:2
wait  # bench_core
OUT=$D/abl bash scripts/gpu/study.sh 10 -- $O --n-trials 0 --ablation b --ablation-length full --workers 2 \
  --devices cuda:0,cuda:1 &
CUDA_VISIBLE_DEVICES=2,3 BDENSE_NUM_THREADS=2 timeout 540 python benchmarks/bench_trials.py --setup 1:cuda:0 \
  --setup 2:cuda:0,cuda:1 --trials 3 --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full \
  --k 2 3 4 6 8 --seed 1000 > $D/bench/bench_trials.log 2>&1
wait
echo "call-4.sh: done"
