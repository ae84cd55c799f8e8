#!/usr/bin/env bash
# The SFD headline at full length for NFE 4 and then NFE 5 (issue 13), on whichever H200 machine is lent (1, 2 or 4
# GPUs; written in session 18, not run yet): for each NFE of NFES (default "4 5"), K = 1, uniform K = 4 and the
# confirmed best (K = 6, a = 0.972, b = 1.82), each one trial whose three students (seeds 1000-1002) train together
# as one batched model, each from its own bank of 200,064 paths (a bank is a function of its seed: a session that
# does not finish an NFE solves the same banks again next time; finished trials come back in the pack).
# Each NFE: its three banks solved in G parts, one part of every bank on each of the G GPUs (`banks.py --bank
# NFE:full:SEED:g/G`; the part that ends last joins the bank), so the GPUs finish together; then the study with one
# worker a GPU (at most three: three trials); the next NFE only with NEED minutes left (default 25 / G + 7: its
# banks and one group, 19 on two GPUs, 13 on four, 32 on one), after the last NFE's bank files are deleted (NFE 4's three are 56 GiB, NFE 5's 70 GiB; the 2-GPU host's disk is 128 GiB).
# The chain starts in the first call: the banks need only the shipped teacher and the wheels, and the study waits
# (wait_assets, deadline.sh) for the data and the Inception that the next calls stage.
# Estimates (H200): an NFE-3 bank took 315-321 s with both GPUs solving (session 18), 283-348 s alone (session 16);
# a bank's cost follows the teacher grid (120 steps at NFE 4, 144 at NFE 5, 96 at NFE 3), so about 400 s an NFE-4
# bank and 480 s an NFE-5 bank on one GPU. Three students trained at 84-97 ms an iteration at NFE 3 (sessions 16
# and 18), so about 115 ms at NFE 4 and 140 ms at NFE 5 (1,563 iterations), plus about 2 minutes of compiling at a
# worker's first group (another K compiled nothing noticeable in session 16: the fast path's head is S wide) and
# 10-15 s of scoring. So, by the kind lent:
#   nvidia-h200-x2: NFE 4 in about 19 minutes (banks 10, then two trials at once, 5.5, and the third, 3.5); NFE 5
#                   in the next session (about 22 minutes).
#   nvidia-h200-x4: NFE 4 in about 11 minutes (banks 5, three trials at once), NFE 5 in about 13 more.
#   nvidia-h200:    NFE 4's banks alone take about 20 minutes: K = 1 and perhaps one more configuration; its 64 GiB
#                   disk holds NFE 4's three banks (56 GiB) only if about 59 GiB are free, and never NFE 5's (70 GiB):
#                   the chain checks the disk first and says so.
# Here first: `bash scripts/gpu/prepare.sh`, then the run folder from the published reports:
#   for r in report-sfd-2026-11-29 report-pd-x-2026-11-29 report-pd-state-2026-11-29; do
#     python -m study.rebuild results/fmnist-campaign/$r --runs-dir /tmp/runs; done
#   bash scripts/gpu/pack.sh /tmp/runs .gpu/runs
# Call 1 (carry .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces), MINUTES from the lease's budget_left_s less about
# two minutes (the start-up and the pack's last fetch):
#   source scripts/gpu/stage.sh; MINUTES=27 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-20.sh
# Calls 2-6 stage .gpu/p1, .gpu/p3, .gpu/p4, .gpu/p5, .gpu/p6 (`source scripts/gpu/stage.sh` alone). Send every call
# in ONE message (the machine goes back 30 s after a call ends), with three waiting calls (timeout_s 590) that poll
# and bring back what stands (the finished pack once there):
#   for i in $(seq 1 113); do [ -f /tmp/bd/out/final/runs.tgz.sha256 ] && break; sleep 5; done
#   if [ -f /tmp/bd/out/final/runs.tgz.sha256 ]; then cp /tmp/bd/out/final/* $OUT/; else bash scripts/gpu/pack.sh /tmp/bd/runs $OUT; fi
#   tar -czf $OUT/logs.tgz /tmp/bd/jobs/*.log /tmp/bd/out/*/*.log /tmp/bd/out/monitor* /tmp/bd/runs/logs 2>/dev/null; bash scripts/gpu/bg.sh status all
source scripts/gpu/deadline.sh  # END from MINUTES; left, lane, wait_assets; Ctrl-C, threads; stage.sh's environment
O="--preset fmnist-gpu --k 2 3 4 6 8 --confirm-top 5 --confirm-seeds 3"
D=$S/out  # $S: stage.sh's folder, /tmp/bd
G=$(nvidia-smi -L | grep -c "^GPU")
W=$(( G < 3 ? G : 3 ))  # workers: three trials an NFE
DEVICES=$(seq -s, -f "cuda:%g" 0 $(( W - 1 )))
mkdir -p $D/final
bash scripts/gpu/bg.sh start mon bash scripts/gpu/monitor.sh $D/monitor 20
first=1
for N in ${NFES:-4 5}; do
  if [ $first = 0 ]; then
    if [ "$(left)" -lt "${NEED:-$(( 25 / G + 7 ))}" ]; then echo "call-20.sh: NFE $N not started ($(left) minutes left)"; break; fi
    find "$BDENSE_CACHE_DIR" -name 'bank-*.pt' -delete  # the last NFE's banks: its study has ended
  fi
  first=0
  # a bank holds 12 NFE + 1 points of 200,064 fp16 images, 0.3815 GiB each (14.1 GiB at NFE 3); solved in parts,
  # the last part's join writes the bank beside its parts: one bank more at the peak
  need=$(awk -v n=$N -v g=$G 'BEGIN { print int((g > 1 ? 4 : 3) * 0.3815 * (12 * n + 1) + 2.999) }')
  free=$(df -B1G --output=avail "$S" | tail -1 | tr -d ' ')
  if [ "$free" -lt "$need" ]; then
    echo "call-20.sh: NFE $N not started: its banks need about $need GiB of disk under $S, $free GiB are free"; break
  fi
  echo "call-20.sh: NFE $N's banks in $G part(s) from $(date -u +%H:%M:%S) ($need GiB of the $free free)"
  for g in $(seq 1 $G); do
    part=$([ "$G" -gt 1 ] && echo ":$g/$G")
    bash scripts/gpu/bg.sh start nfe$N-b$g python scripts/gpu/banks.py --bank $N:full:1000$part \
      --bank $N:full:1001$part --bank $N:full:1002$part -- $O --device cuda:$(( g - 1 ))
  done
  for g in $(seq 1 $G); do bash scripts/gpu/bg.sh wait nfe$N-b$g $(( $(left) * 60 )) | tail -2; done
  wait_assets 300
  echo "call-20.sh: NFE $N's study from $(date -u +%H:%M:%S) on $DEVICES"
  mkdir -p $D/nfe$N
  BDENSE_STACKS_EVERY=60 OUT=$D/nfe$N bash scripts/gpu/study.sh "$(lane)" \
    -- $O --n-trials 0 --ablation nfe --ablation-length full --ablation-nfe $N --workers $W --devices $DEVICES
  grep -h "^fast path:" $D/nfe$N/*.log $S/runs/logs/*.log 2>/dev/null | cut -c1-200 | head -3
done
OUT=$D/final bash scripts/gpu/study.sh 1 > /dev/null 2>&1  # the pack with every trial
echo "call-20.sh: done at $(date -u +%H:%M:%S)"
