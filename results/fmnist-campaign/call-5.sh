#!/usr/bin/env bash
# What session 6 ran (one 4-GPU machine, 4x H100), after `source scripts/gpu/stage.sh`, with MINUTES=23. Its NFE-3 stage
# ran out of its time (14 minutes, trials unfinished) and the machine was lost before its final pack came back
# (the README's session 6); superseded by call-6.sh.
# From the first staging call (the wheels), scripts/gpu/banks.py solves NFE 3's three full-length banks on cuda:0-2
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   for i in 0 1 2; do bash scripts/gpu/bg.sh start b$i python scripts/gpu/banks.py --bank 3:full:100$i -- $O --device cuda:$i; done
# and cuda:3 runs the GPU-marked tests (bg job "gpu": PD's fp32 fast path against eager among them):
#   CUDA_VISIBLE_DEVICES=3 bash scripts/gpu/bg.sh start gpu bash -c "python -m pytest -q -m gpu tests/test_fast.py > /tmp/bd/out/gpu.log 2>&1"
# The run folder comes in the last staging call (.gpu/runs: the study rebuilt from the published trials.csv by
# `python -m study.rebuild`, the session-5 run folder having been lost). Then, started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-5.sh
# two lanes until the deadline (MINUTES, default 21, from this script's start):
#   cuda:0-2  the SFD headline at NFE 3 at full length (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002),
#             waiting for its banks; then issue 14's whole trials per hour, 1 GPU against 2 (cuda:0, cuda:0-1), beside
#             PD with the state distance on cuda:2 (the B-DENSE authors'; a screen of 12 trials: K = 1, uniform
#             K = 2 and 10 searched a at K = 2, then the best a and both baselines at 1,000 updates a round);
#   cuda:3    once the tests have passed: seed 1000's NFE-2 bank (what bench_trials reads), benchmarks/bench_core.py
#             with --profile, then PD with the x distance (Salimans and Ho's), the same design.
# PD runs only if its fast path passed its GPU test. Every study stage packs the run folder into /tmp/bd/out/<stage>/;
# after all of them, /tmp/bd/out/final/ holds the pack with everything (complete once its runs.tgz.sha256 is there).
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
END=$(( $(date +%s) + ${MINUTES:-21} * 60 ))
left() { local m=$(( (END - $(date +%s)) / 60 - ${1:-0} )); echo $(( m > 1 ? m : 1 )); }  # minutes to the deadline
mkdir -p $D/pdx $D/pdstate $D/nfe3 $D/bench $D/core $D/final
OUT=$D/restore bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # restores the run folder once, before the lanes
pd_ok() { grep -q "passed" $D/gpu.log 2>/dev/null && ! grep -q "FAILED tests/test_fast.py::test_fast_pd" $D/gpu.log; }
(  # lane cuda:3
  while [ -f /tmp/bd/jobs/gpu.pid ] && kill -0 "$(cat /tmp/bd/jobs/gpu.pid)" 2>/dev/null; do sleep 5; done
  python scripts/gpu/banks.py --bank 2:full:1000 -- $O --device cuda:3; touch $D/bank2.done
  BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1 timeout 420 python benchmarks/bench_core.py --device cuda:3 --no-check \
    --students 1 --profile 15 --out $D/core/bench_core.json > $D/core/bench_core.log 2>&1
  if pd_ok; then OUT=$D/pdx bash scripts/gpu/study.sh "$(left)" -- $PD --distance x --devices cuda:3
  else echo "call-5.sh: PD's fast path did not pass its GPU test (or the tests did not run): no PD study"; fi
) &
OUT=$D/nfe3 bash scripts/gpu/study.sh "$(left 9)" -- $O --n-trials 0 --ablation nfe --ablation-length full \
  --ablation-nfe 3 --workers 3 --devices cuda:0,cuda:1,cuda:2
if pd_ok; then OUT=$D/pdstate bash scripts/gpu/study.sh "$(left)" -- $PD --distance state --devices cuda:2 & fi
while [ ! -f $D/bank2.done ]; do sleep 5; done  # seed 1000's NFE-2 bank, which bench_trials reads, is solved
BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1 timeout $(( $(left) * 60 )) python benchmarks/bench_trials.py --setup 1:cuda:0 \
  --setup 2:cuda:0,cuda:1 --trials 3 --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full \
  --k 2 3 4 6 8 --seed 1000 > $D/bench/bench_trials.log 2>&1
wait
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with every stage's trials
echo "call-5.sh: done"
