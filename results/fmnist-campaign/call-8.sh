#!/usr/bin/env bash
# The campaign's next GPU session (one 4-GPU machine), after `source scripts/gpu/stage.sh`. Planned, not run yet.
# Session 8 ran call-7.sh: its NFE-3 workers trained at about 11 s an iteration (bench_core, in one process on the
# fourth GPU at the same time, timed that step at 51 ms; session 7's workers, without bench_core beside them, 213 ms)
# and the deadline stopped them before iteration 60 of 1,563. Nothing said why: the worker logs held one line each.
# One suspect was found here afterwards: BDENSE_NUM_THREADS (exported as 2 by study.sh) had been read by nothing
# since the study/ rewrite, so every process ran torch's CPU threads on all cores; it is read again now, and every
# worker's log names its thread count. This chain runs no benchmark beside the campaign, and it records why a lane
# is slow:
#   - every worker logs a timestamped pace line about once a minute (ms an iteration; the shares the host waited for
#     the device and delivered records) and, with BDENSE_STACKS_EVERY=60, every thread's stack once a minute;
#   - TORCH_LOGS=recompiles,cudagraphs,perf_hints (where this torch knows the names) puts recompilations and
#     CUDA-graph recordings in the same logs;
#   - scripts/gpu/monitor.sh samples GPU utilisation, CPU quota and throttling and the busiest processes and
#     threads every 20 s from the first call on.
# Read the budget from a run's reply (`lease.budget_left_s`), not from status, and send each wait call at once, with
# nothing read or thought between two calls (the machine goes back 30 s after a call ends; sessions 6 and 7 lost
# machines so; the packs keep what came back).
# Here first: `bash scripts/gpu/prepare.sh`, then the run folder from the published report (the store itself is not
# kept between sessions):
#   python -m study.rebuild results/fmnist-campaign/report-2026-11-27 --runs-dir /tmp/runs
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# First staging call (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces): the monitor, and NFE 3's three
# full-length banks on cuda:0-2 (368-396 s each on the H100s of sessions 6-8):
#   source scripts/gpu/stage.sh; bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh /tmp/bd/out/monitor 20
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   for i in 0 1 2; do bash scripts/gpu/bg.sh start b$i python scripts/gpu/banks.py --bank 3:full:100$i -- $O --device cuda:$i; done
# Calls 2-4 stage .gpu/p1, .gpu/p3, .gpu/p4 (`source scripts/gpu/stage.sh`); the last staging call (.gpu/p5) starts
# this chain:
#   MINUTES=24 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-8.sh
# and every later call waits 9.5 minutes (sleep 570), then brings back what stands:
#   sleep 570; bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log /tmp/bd/out/*/*.log \
#     /tmp/bd/out/trials/* /tmp/bd/runs/logs 2>/dev/null; true
# until /tmp/bd/out/final/runs.tgz.sha256 is there.
# Lanes, until the deadline (MINUTES, default 24, from this script's start: 1,800 s less about 100 s of staging
# before it and 150 s of margin after it):
#   cuda:0-2  the SFD headline at NFE 3 at full length (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002 in
#             each trial's three batched students): it waits for its banks (6.5 minutes), loads them and compiles,
#             then trains (session 7: 213 ms an iteration, 14.3 minutes from the chain's start to the end of
#             training) and scores; then, with 6 minutes or more left, cuda:0-1 measure whole trials an hour on 2
#             GPUs against 1 (benchmarks/bench_trials.py, screen-length trials), then with 4 minutes left
#             bench_gpus.py --track in the campaign's shape, and cuda:2 runs PD with the state distance (the
#             authors' code), its screen of 12 trials, as far as the time goes;
#   cuda:3    PD with the x distance (Salimans and Ho's): a screen of 12 trials (K = 1, uniform K = 2, 10 searched a
#             at K = 2), then the best a and both baselines at 1,000 updates a round, seeds 1000-1002, as far as the
#             time goes (21.5 ms an update on the fast path, fp32, session 7).
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
END=$(( $(date +%s) + ${MINUTES:-24} * 60 ))
left() { local m=$(( (END - $(date +%s)) / 60 )); echo $(( m > 1 ? m : 1 )); }  # whole minutes to the deadline
mkdir -p $D/pdx $D/pds $D/nfe3 $D/final
# torch refuses to import under a TORCH_LOGS name it does not know (or an empty TORCH_LOGS): set it only where this
# torch has every name
TL=recompiles,cudagraphs,perf_hints
TORCH_LOGS=$TL python -c "import torch" 2> /dev/null || { echo "call-8.sh: TORCH_LOGS=$TL unknown here; left out"; TL=; }
OUT=$D/restore bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # restores the run folder once, before the lanes
(
  OUT=$D/pdx bash scripts/gpu/study.sh "$(left)" -- $PD --distance x --devices cuda:3
) &
(
  env ${TL:+TORCH_LOGS=$TL} BDENSE_STACKS_EVERY=60 OUT=$D/nfe3 bash scripts/gpu/study.sh "$(left)" \
    -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 --workers 3 --devices cuda:0,cuda:1,cuda:2
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
echo "call-8.sh: done"
