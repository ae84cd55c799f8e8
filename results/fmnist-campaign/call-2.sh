#!/usr/bin/env bash
# What the campaign's second GPU session ran (2026-11-27, one 2-GPU machine), after `source scripts/gpu/stage.sh`
# and with the banks of seeds 1000-1002 solved ahead by scripts/gpu/banks.py while the assets were staged:
# the rest of the confirmation, the b ablation at full length with the teacher scored beside it, then issue 14's
# 2-GPUs-against-1 benchmark on seed 1000's full-length bank. Started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-2.sh
# Each stage writes under /tmp/bd/out/<stage>/ (brought back by the calls that follow); Ctrl-C stops the chain.
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/conf $D/abl $D/teacher $D/bench
OUT=$D/conf bash scripts/gpu/study.sh 14 -- $O --n-trials 1 --workers 2 --devices cuda:0,cuda:1
python scripts/gpu/teacher.py --preset fmnist-gpu --score results/teachers/teacher-fmnist-gpu.pt --steps 32 48 \
  --device cuda:1 --out $D/teacher > $D/teacher/teacher.log 2>&1 &
OUT=$D/abl bash scripts/gpu/study.sh 10 -- $O --n-trials 0 --ablation b --ablation-length full --workers 2 \
  --devices cuda:0,cuda:1
wait
BDENSE_NUM_THREADS=2 python benchmarks/bench_trials.py --setup 1:cuda:0 --setup 2:cuda:0,cuda:1 --trials 3 \
  --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full --k 2 3 4 6 8 --seed 1000 \
  > $D/bench/bench_trials.log 2>&1
echo "call-2.sh: done"
