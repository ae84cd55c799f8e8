#!/usr/bin/env bash
# What session 8 ran (4x H100, MINUTES=24, all of it): bench_core beside the NFE-3 workers, which trained at about
# 11 s an iteration and were stopped before iteration 60 of 1,563; see the campaign README. The next chain is call-8.sh.
# The campaign's GPU session as session 7 planned it (one 4-GPU machine), after `source scripts/gpu/stage.sh`.
# Session 7 ran call-6.sh, this chain's first form, and lost it twice: (1) the machine went back 30 s after a wait
# call returned, because the next call came later than that; (2) `status` said 1,800 s were left after that loss
# while 945 s were, so the second machine ran out before the NFE-3 trials ended (they train about 5.5 minutes after
# 8.5 minutes of banks, bank loading and compiling). So: read `lease.budget_left_s` of a run's reply, not status, and
# send each wait call at once, with nothing read or thought between two calls (the packs keep what came back).
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
#     benchmarks/bench_core.py --device cuda:3 --no-check --students 1 --profile 15 --campaign-nfe 2 3 4 \
#     --out /tmp/bd/out/core/bench_core.json
# (about 14 minutes: session 7's run without --campaign-nfe took 9.5; the campaign rows compile 4 more engines)
# The last staging call (.gpu/p5) starts this chain:
#   MINUTES=24 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-7.sh
# and every later call waits 9.5 minutes (sleep 570), then brings back what stands (the machine goes back 30 s after
# a call ends, and with it everything not brought back: sessions 6 and 7 lost machines so):
#   sleep 570; bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log /tmp/bd/out/*/*.log \
#     /tmp/bd/out/core/* /tmp/bd/out/trials/* /tmp/bd/runs/logs 2>/dev/null; true
# (a running trial's MLflow run in the pack's mlflow.db holds its loss at every step with the time it was logged:
# session 7 read its NFE-3 trials' pace there)
# Lanes, until the deadline (MINUTES, default 24, from this script's start: 1,800 s less about 100 s of staging
# before it and 150 s of margin after it):
#   cuda:0-2  the SFD headline at NFE 3 at full length (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002 in
#             each trial's three batched students): it waits for its banks (6.5 minutes), then about 2 minutes of
#             bank loading and compiling, 5.5 minutes of training (213 ms an iteration in session 7) and the FID
#             (session 7: 14.3 minutes from the chain's start to the end of training); then, with 6 minutes or more
#             left, cuda:0-1 measure whole trials an hour on 2 GPUs against 1 (benchmarks/bench_trials.py,
#             screen-length trials: they need no full-length bank of NFE 2, which would cost 5 minutes first), then
#             with 4 minutes left bench_gpus.py --track in the campaign's shape (both GPUs timed at once, the study's
#             MLflow logging on), and cuda:2 runs PD with the state distance (the authors' code), its screen of 12
#             trials, as far as the time goes;
#   cuda:3    once bench_core has ended: PD with the x distance (Salimans and Ho's): a screen of 12 trials (K = 1,
#             uniform K = 2, 10 searched a at K = 2), then the best a and both baselines at 1,000 updates a round,
#             seeds 1000-1002, as far as the time goes (session 7 timed PD's fast update at 21.5 ms, fp32).
# The GPU-marked tests passed on 4x H100 in session 6 (6 of 6): not run again.
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
END=$(( $(date +%s) + ${MINUTES:-24} * 60 ))
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
    if [ "$(left)" -ge 4 ]; then  # why side-by-side workers trained slower (results/README.md), with MLflow logging
      timeout --signal=INT $(( $(left) * 60 - 30 )) python benchmarks/bench_gpus.py --devices cuda:0,cuda:1 \
        --substeps 24 --students 3 --track --out $D/trials/bench_gpus_track.json > $D/trials/bench_gpus.log 2>&1
    fi
    wait
  fi
) &
wait
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with both lanes' trials
echo "call-7.sh: done"
