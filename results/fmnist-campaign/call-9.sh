#!/usr/bin/env bash
# NOT RUN: session 10 spent its device time on benchmarks/bench_bank.py and bench_core.py; sessions 11 on have only H200s
# (call-11.sh and call-12.sh are the chains for the 2x H200 machine).
# The campaign's NFE-3 headline on ONE H100 (nvidia-h100-x1, counted at half rate), after `source scripts/gpu/stage.sh`
# has staged p1-p5 and NFE 3's three full-length banks (seeds 1000-1002) were started in the first call:
#   source scripts/gpu/stage.sh; O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   bash scripts/gpu/bg.sh start banks python scripts/gpu/banks.py --bank 3:full:1000 --bank 3:full:1001 \
#     --bank 3:full:1002 -- $O --device cuda:0
# Started by the last staging call:  MINUTES=40 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-9.sh
# Sessions 8 and 9 ran the headline on a 4-GPU machine and lost it: session 8's NFE-3 workers drew their paths
# from the 14.1 GiB host banks at 11 s an iteration; sfd.banks_for_device now copies each group's columns to the
# GPU (benchmarks/bench_bank.py measured the two ways in this session's first call). One worker trains the three
# trials (K = 1, uniform K = 4, the confirmed best; each trial's three seeds batched) one after the other, so its
# three host banks (42 GiB pinned) are loaded once; then, with 8 minutes or more left, PD with the x distance.
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
END=$(( $(date +%s) + ${MINUTES:-40} * 60 ))
left() { local m=$(( (END - $(date +%s)) / 60 )); echo $(( m > 1 ? m : 1 )); }
mkdir -p $D/nfe3 $D/pdx $D/final
OUT=$D/restore bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # restores the run folder once
BDENSE_STACKS_EVERY=60 OUT=$D/nfe3 bash scripts/gpu/study.sh "$(left)" \
  -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 --workers 1 --devices cuda:0
if [ "$(left)" -ge 8 ]; then
  OUT=$D/pdx bash scripts/gpu/study.sh "$(left)" -- $PD --distance x --devices cuda:0
fi
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with every trial
echo "call-9.sh: done"
