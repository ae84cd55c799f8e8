#!/usr/bin/env bash
# Session 14's second chain on one H200 (nvidia-h200), on what was left of the budget after call-14.sh's machine
# went cold (see the campaign README): PD's uniform K = 2 at full length, x distance, seeds 1000-1002, in a fresh
# process. In call-14.sh those three trials failed with torch's cudagraph-tree error "graph recording observed an
# input tensor deallocate during graph recording that did not occur during replay" (pytorch/pytorch#154306, open)
# right after three full-length K = 1 trials in the same process; a process that starts with K = 2 ran it in
# session 12. The confirmation re-enqueues failed (configuration, seed) pairs, so nothing else runs first.
# Carried like call-14.sh (call 1: .gpu/p2 .gpu/runs .gpu/SHA256SUMS .gpu/pieces; calls 2-5: p1 p3 p4 p5), then
#   MINUTES=8 bash scripts/gpu/bg.sh start all bash results/fmnist-campaign/call-15.sh
# and one call that waits for /tmp/bd/out/final/runs.tgz.sha256 and copies /tmp/bd/out/final/*.
source scripts/gpu/deadline.sh
PD="--preset fmnist-gpu --framework pd --k 2 --n-trials 0 --confirm-top 1 --confirm-seeds 3"
echo "call-15.sh: PD's confirmation (uniform K = 2 left), x distance, from $(date -u +%H:%M:%S)"
BDENSE_STACKS_EVERY=60 OUT=/tmp/bd/out/final bash scripts/gpu/study.sh "$(lane)" -- $PD --distance x
echo "call-15.sh: done at $(date -u +%H:%M:%S)"
