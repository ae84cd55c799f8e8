#!/usr/bin/env bash
# The campaign's next GPU session (one 4-GPU machine), after `source scripts/gpu/stage.sh`. Planned, not run yet.
# From the first staging call (the wheels), scripts/gpu/banks.py solves NFE 3's three full-length banks on cuda:0-2
#   O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
#   for i in 0 1 2; do bash scripts/gpu/bg.sh start b$i python scripts/gpu/banks.py --bank 3:full:100$i -- $O --device cuda:$i; done
# and cuda:3 runs the GPU-marked tests (bg job "gpu": PD's fp32 fast path against eager first, revised in session 5):
#   CUDA_VISIBLE_DEVICES=3 bash scripts/gpu/bg.sh start gpu bash -c "python -m pytest -q -m gpu tests/test_fast.py > /tmp/bd/out/gpu.log 2>&1"
# The run folder's pack (26 MB after session 5) goes in the last staging call, in two calls if the working tree has grown.
# Two lanes, on different studies (PD's are studies of their own, so their workers never take the SFD study's trials):
#   cuda:3    PD, x distance (Salimans and Ho's): a screen of 12 trials (K = 1, uniform K = 2, 10 searched a at K = 2;
#             150 updates a round), then the best a and both baselines at full length (1,000 updates a round),
#             seeds 1000-1002, FID after every round;
#   cuda:0-2  PD, state distance (the B-DENSE authors'), the same design, while the NFE-3 banks are solved; then the
#             SFD headline at NFE 3 at full length (K = 1, uniform K = 4, the confirmed best; seeds 1000-1002);
#   then      issue 14's whole trials per hour, 1 GPU against 2 on cuda:0-1 (seed 1000's NFE-2 bank: solved first,
#             about 5 min), beside benchmarks/bench_core.py --profile 15 on cuda:2, if the device time allows: stop the
#             chain (bg.sh stop all) when it does not; both print as they measure.
# Every study stage packs the run folder into /tmp/bd/out/<stage>/ (complete once its runs.tgz.sha256 is there); the
# last one to end has everything. Started by
#   bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-5.sh
set -uo pipefail
trap 'exit 130' INT
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 12 --confirm-top 1 --confirm-seeds 3"
D=/tmp/bd/out
mkdir -p $D/pdx $D/pdstate $D/nfe3 $D/bench
OUT=$D/restore bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # restores the run folder once, before the lanes
while [ -f /tmp/bd/jobs/gpu.pid ] && kill -0 "$(cat /tmp/bd/jobs/gpu.pid)" 2>/dev/null; do sleep 5; done  # tests first
if grep -q "^FAILED tests/test_fast.py::test_fast_pd" $D/gpu.log 2>/dev/null || ! grep -q "passed" $D/gpu.log 2>/dev/null; then
  echo "call-5.sh: PD's fast path did not pass its GPU test (or the tests did not run): no PD study this session"
else
  OUT=$D/pdx bash scripts/gpu/study.sh 20 -- $PD --distance x --devices cuda:3 &
  OUT=$D/pdstate bash scripts/gpu/study.sh 14 -- $PD --distance state --workers 3 --devices cuda:0,cuda:1,cuda:2
fi
OUT=$D/nfe3 bash scripts/gpu/study.sh 12 -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe 3 \
  --workers 3 --devices cuda:0,cuda:1,cuda:2
wait
python scripts/gpu/banks.py --bank 2:full:1000 -- $O --device cuda:0
mkdir -p $D/core
BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1 timeout 540 python benchmarks/bench_core.py --device cuda:2 --no-check \
  --students 1 --profile 15 --out $D/core/bench_core.json > $D/core/bench_core.log 2>&1 &
BDENSE_NUM_THREADS=2 PYTHONUNBUFFERED=1 timeout 540 python benchmarks/bench_trials.py --setup 1:cuda:0 \
  --setup 2:cuda:0,cuda:1 --trials 3 --out $D/bench/bench_trials.json -- --preset fmnist-gpu --length full \
  --k 2 3 4 6 8 --seed 1000 > $D/bench/bench_trials.log 2>&1
wait  # bench_core
echo "call-5.sh: done"
