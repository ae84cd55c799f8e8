#!/usr/bin/env bash
# What session 7 ran (twice: its first machine was lost after 13 minutes, the second one ran out of device time
# before the NFE-3 trials ended; see the README). `MINUTES=23`, then `MINUTES=14`; bench_core ran on the first
# machine only. The next session's chain is call-7.sh.
# Here first: `bash scripts/gpu/prepare.sh`, then the run folder from the published report (the store itself is not
# kept between sessions):
#   python -m study.rebuild results/fmnist-campaign/report-2026-11-27 --runs-dir /tmp/runs
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# First staging call (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): NFE 3's three full-length banks on
# cuda:0-2 (386 s each on session 6's H100s) and benchmarks/bench_core.py on cuda:3 (it prints each figure as it
# measures; its PD row needs the data of the next call, its FID row the Inception of the three after):
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   for i in 0 1 2; do bash scripts/gpu/bg.sh start b$i python scripts/gpu/banks.py --bank 3:full:100$i -- $O --device cuda:$i; done
#   mkdir -p /tmp/bd/out/core; BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1 bash scripts/gpu/bg.sh start core python \
#     benchmarks/bench_core.py --device cuda:3 --no-check --students 1 --profile 15 --out /tmp/bd/out/core/bench_core.json
# The last staging call (.gpu/p5) starts this chain:
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-6.sh
# and every later call waits about 9 minutes, then brings back what stands (the machine goes back 30 s after a call
# ends, and with it everything not brought back: session 6 lost its second half so):
#   bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log /tmp/bd/out/*/*.log /tmp/bd/out/core/*
# (a running trial's MLflow run in the pack's mlflow.db holds its loss at every step with the time it was logged: how
# fast the NFE-3 trials train, which session 6 could not see)
# Lanes, until the deadline (MINUTES, default 20, from this script's start):
#   cuda:0-2  the SFD headline at NFE 3 at full length (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002 in
#             each trial's three batched students): it waits for its banks, then about 8-10 minutes a trial (session 6
#             stopped them unfinished after 7.6 minutes of training: see the README); then, with 6 minutes or more
#             left, cuda:0-1 measure whole trials an hour on 2 GPUs against 1 (benchmarks/bench_trials.py, screen-length
#             trials: they need no full-length bank of NFE 2, which would cost 5 minutes first) and cuda:2 runs PD
#             with the state distance (the authors' code), its screen of 12 trials, as far as the time goes;
#   cuda:3    once bench_core has ended: PD with the x distance (Salimans and Ho's): a screen of 12 trials (K = 1,
#             uniform K = 2, 10 searched a at K = 2; about 2 minutes each), then the best a and both baselines at
#             1,000 updates a round, seeds 1000-1002, as far as the time goes.
# The GPU-marked tests passed on 4x H100 in session 6 (6 of 6): not run again.
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
END=$(( $(date +%s) + ${MINUTES:-20} * 60 ))
left() { local m=$(( (END - $(date +%s)) / 60 )); echo $(( m > 1 ? m : 1 )); }  # whole minutes to the deadline
mkdir -p $D/pdx $D/pds $D/nfe3 $D/final
OUT=$D/restore bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # restores the run folder once, before the lanes
(
  while [ -f /tmp/bd/jobs/core.pid ] && kill -0 "$(cat /tmp/bd/jobs/core.pid)" 2>/dev/null; do sleep 5; done
  OUT=$D/pdx bash scripts/gpu/study.sh "$(left)" -- $PD --distance x --devices cuda:3
) &
(
  OUT=$D/nfe3 bash scripts/gpu/study.sh "$(left)" -- $O --n-trials 0 --ablation nfe --ablation-length full \
    --ablation-nfe 3 --workers 3 --devices cuda:0,cuda:1,cuda:2
  if [ "$(left)" -ge 6 ]; then
    OUT=$D/pds bash scripts/gpu/study.sh "$(left)" -- $PD --distance state --devices cuda:2 &
    mkdir -p $D/trials
    timeout --signal=INT $(( $(left) * 60 - 30 )) python benchmarks/bench_trials.py --setup 1:cuda:0 \
      --setup 2:cuda:0,cuda:1 --trials 6 --out $D/trials/bench_trials.json -- --preset fmnist-gpu --k 2 3 4 6 8 \
      --seed 1000 > $D/trials/bench_trials.log 2>&1
    wait
  fi
) &
wait
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with both lanes' trials
echo "call-6.sh: done"
