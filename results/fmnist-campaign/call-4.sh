#!/usr/bin/env bash
# The campaign's fifth GPU session (one 4-GPU machine), after `source scripts/gpu/stage.sh`. From the first staging
# call, scripts/gpu/banks.py solves the six full-length banks this chain reads (cuda:0: NFE 3 seed 1000 then NFE 2
# seed 1001; cuda:1: NFE 3 / 1001 then NFE 2 / 1002; cuda:2: NFE 3 / 1002; cuda:3: NFE 2 / 1000) and the GPU-marked
# tests run on cuda:2 (bg job "gpu"). A study that asks for a bank being solved waits for it. Two lanes:
#   cuda:3     the K grid at screen length with 8 seeds (Figure 4's noise band, FID vs K with error bars), then
#              benchmarks/bench_core.py alone on its GPU (issue 14's table, the PD update and the FID path with it);
#   cuda:0-2   the headline at NFE 3 (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002, full length),
#              then the b ablation again (its per-seed FIDs were lost in session 4), then issue 14's whole trials
#              per hour, 1 GPU against 2 (seed 1000's NFE-2 bank, full length) on cuda:0-1.
# Both lanes write to the one run folder (/tmp/bd/runs: one journal, one MLflow store); it is restored once
# before they start, and packed again after both end into /tmp/bd/out/final (a lane's own pack, written while the
# other lane may still write, is a backup). A pack is complete once its runs.tgz.sha256 is there. Started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-4.sh
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/gpu $D/kgrid $D/core $D/nfe3 $D/abl $D/bench $D/final
OUT=$D/restore bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # restores the run folder from the carried pack
(
  OUT=$D/kgrid bash scripts/gpu/study.sh 12 -- $O --n-trials 0 --ablation k --ablation-seeds 8 --devices cuda:3
  BDENSE_NUM_THREADS=2 timeout 600 python benchmarks/bench_core.py --device cuda:3 --no-check --students 1 4 \
    --out $D/core/bench_core.json > $D/core/bench_core.log 2>&1
  echo "call-4.sh: lane cuda:3 done"
) &
OUT=$D/nfe3 bash scripts/gpu/study.sh 12 -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 \
  --workers 3 --devices cuda:0,cuda:1,cuda:2
OUT=$D/abl bash scripts/gpu/study.sh 10 -- $O --n-trials 0 --ablation b --ablation-length full --workers 3 \
  --devices cuda:0,cuda:1,cuda:2
BDENSE_NUM_THREADS=2 timeout 540 python benchmarks/bench_trials.py --setup 1:cuda:0 --setup 2:cuda:0,cuda:1 --trials 3 \
  --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full --k 2 3 4 6 8 --seed 1000 \
  > $D/bench/bench_trials.log 2>&1
echo "call-4.sh: lane cuda:0-2 done"
wait
cp /tmp/bd/jobs/gpu.log $D/gpu/pytest.log 2>/dev/null
OUT=$D/final bash scripts/gpu/study.sh 1 > $D/final/pack.log 2>&1
echo "call-4.sh: done"
