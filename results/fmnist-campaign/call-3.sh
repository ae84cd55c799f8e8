#!/usr/bin/env bash
# The campaign's next GPU session (one 2-GPU machine), after `source scripts/gpu/stage.sh` and with the banks of
# seeds 1000-1002 at NFE 2 being solved by scripts/gpu/banks.py since the first staging call (1000 and 1002 on
# cuda:0, 1001 on cuda:1). While cuda:0 solves the third bank: the GPU-marked tests (the PD fast path among them)
# and the K grid at screen length with 8 seeds (Figure 4's K = 1 noise band, FID vs K with error bars) on cuda:1;
# then the b ablation again (its per-seed FIDs were lost in session 4); then issue 14's 2 GPUs against 1 on seed
# 1000's full-length bank. Started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-3.sh
# Each stage writes under /tmp/bd/out/<stage>/; a stage's run folder pack is complete once its runs.tgz.sha256
# is there. Ctrl-C stops the chain.
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/gpu $D/kgrid $D/abl $D/bench
CUDA_VISIBLE_DEVICES=1 timeout 900 python -m pytest -q -m gpu tests/test_fast.py > $D/gpu/pytest.log 2>&1 &
OUT=$D/kgrid bash scripts/gpu/study.sh 8 -- $O --n-trials 0 --ablation k --ablation-seeds 8 --devices cuda:1
wait
OUT=$D/abl bash scripts/gpu/study.sh 10 -- $O --n-trials 0 --ablation b --ablation-length full --workers 2 \
  --devices cuda:0,cuda:1
BDENSE_NUM_THREADS=2 timeout 540 python benchmarks/bench_trials.py --setup 1:cuda:0 --setup 2:cuda:0,cuda:1 --trials 3 \
  --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full --k 2 3 4 6 8 --seed 1000 \
  > $D/bench/bench_trials.log 2>&1
echo "call-3.sh: done"
