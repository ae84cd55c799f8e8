#!/usr/bin/env bash
# Sourced by a chain (results/fmnist-campaign/call-*.sh): its deadline, MINUTES (default ${1:-26}) from now, and
#   left   whole minutes to the deadline (at least 1)
#   lane   a study's minutes: one less, for the pack after it (at least 1: `timeout 0` would never stop it)
#   need_assets   exit 2 with one line unless the data, the wheels and the Inception are all staged (session 17's
#          first chain started with the data's part missing and every study in it stopped at loading the images)
#   wait_assets SECONDS   need_assets after waiting up to SECONDS for them (a chain started in the first call, whose
#          banks need only the teacher and the wheels, while later calls still stage the data and the Inception)
# It also sets what every chain sets: stop on Ctrl-C, 2 CPU threads a process unless set, unbuffered Python, and
# stage.sh's environment (PYTHONPATH with the staged wheels, the cache, data and Inception): a chain must not rely
# on the call that started it having sourced stage.sh (session 12's chain inherited none, because that call ran
# `source stage.sh | tail`, a pipeline, and its bench_trials.py stopped at `import optuna`).
source "$(dirname "${BASH_SOURCE[0]}")/stage.sh"
set -uo pipefail
trap 'exit 130' INT
export BDENSE_NUM_THREADS=${BDENSE_NUM_THREADS:-2} PYTHONUNBUFFERED=1
END=$(( $(date +%s) + ${MINUTES:-${1:-26}} * 60 ))
left() { local m=$(( (END - $(date +%s)) / 60 )); echo $(( m > 1 ? m : 1 )); }
lane() { local m=$(( $(left) - 1 )); echo $(( m > 1 ? m : 1 )); }
assets_staged() { case "$(stage_status)" in *"data=yes wheels=yes inception=yes"*) return 0;; esac; return 1; }
need_assets() {
  assets_staged && return 0  # stage_status: stage.sh's, as this file sourced it above
  echo "${0##*/}: not every asset is staged ($(stage_status)): carry the missing .gpu/pN parts, then start the chain again"
  exit 2
}
wait_assets() {
  local end=$(( $(date +%s) + ${1:-0} ))
  while [ "$(date +%s)" -lt "$end" ]; do assets_staged && return 0; sleep 5; done
  need_assets
}
