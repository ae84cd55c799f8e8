#!/usr/bin/env bash
# Run or resume studies on the GPU machine for at most MINUTES, then bring back their stores.
#
#   bash scripts/gpu/study.sh MINUTES -- <study/run.py options> [--- <study/run.py options> ...]
#
# Each group of options after `--`/`---` is one study/run.py command; the groups run at the same time on
# the one GPU (e.g. an SFD ablation next to a PD study). Every run folder is /tmp/bd/runs (one Optuna journal
# and one MLflow SQLite store hold all studies); when the machine is fresh it is restored from the
# pack that an earlier call brought back and that this call, or this and earlier calls on the same machine,
# carried as .gpu/runs/runs.tgz.part.* (with runs.tgz.npieces and runs.tgz.sha256, checked when there: a pack
# that passes the 64 MiB a call carries together with the working tree goes over several calls, a few pieces
# each). At the end the run folder (without its caches) is packed into $OUT/runs.tgz.part.* (15 MB pieces),
# $OUT/runs.tgz.npieces and $OUT/runs.tgz.sha256, written last (a pack without it is unfinished),
# together with each command's log. Stopping at the time limit, or `bash scripts/gpu/bg.sh stop NAME` for a
# study.sh started by bg.sh, is Ctrl-C for the study: the running trials are marked failed (and retried next
# time), every finished trial is kept.
set -uo pipefail
cd "$(dirname "$0")/../.."
MINUTES=$1; shift
source scripts/gpu/stage.sh
RUNS=$S/runs  # $S: stage.sh's folder, /tmp/bd
OUT=${OUT:-$S/out}
mkdir -p "$OUT"
P=$S/parts/runs  # the carried pack's pieces, collected by stage.sh over one or more calls
if [ ! -d $RUNS ] && ls $P/runs.tgz.part.* >/dev/null 2>&1; then
  have=$(ls $P/runs.tgz.part.* | wc -l); want=$(cat $P/runs.tgz.npieces 2>/dev/null || echo "$have")
  if [ "$have" -lt "$want" ]; then
    echo "study.sh: error: $have of the run folder pack's $want pieces are here; carry the rest of .gpu/runs/runs.tgz.part.* (one call or more) before a study starts" >&2
    exit 2
  fi
  if [ -f $P/runs.tgz.sha256 ] && [ "$(cat $P/runs.tgz.part.* | sha256sum | cut -d' ' -f1)" != "$(cat $P/runs.tgz.sha256)" ]; then
    echo "study.sh: error: .gpu/runs/runs.tgz.part.* do not match runs.tgz.sha256 (a piece missing or cut short); carry the whole pack" >&2
    rm -rf $P
    exit 2
  fi
  mkdir -p $RUNS && cat $P/runs.tgz.part.* | tar -C $RUNS -xzf - && rm -rf $P && echo "study.sh: run folder restored from .gpu/runs"
fi
mkdir -p $RUNS
export BDENSE_NUM_THREADS=${BDENSE_NUM_THREADS:-2}
groups=(); cur=""
for a in "$@"; do
  if [ "$a" = "--" ] || [ "$a" = "---" ]; then [ -n "$cur" ] && groups+=("$cur"); cur=""; else cur+=" $(printf '%q' "$a")"; fi
done
[ -n "$cur" ] && groups+=("$cur")
pids=(); i=0
for g in "${groups[@]}"; do
  i=$((i + 1))
  echo "study.sh: [$i] python study/run.py --runs-dir $RUNS$g"
  # --preserve-status: "study.sh: exit N" is the study's own status (130: it stopped cleanly on the signal; 137: it
  # was still running 60 s after it and was killed), not timeout's 124 for both (session 12 could not tell how its
  # PD study that left a trial RUNNING had ended)
  eval "exec timeout --preserve-status --signal=INT --kill-after=60 $((MINUTES * 60)) python study/run.py --runs-dir $RUNS $g" \
    > "$OUT/study-$i.log" 2>&1 &
  pids+=($!)
done
# Ctrl-C (bg.sh stop) goes on to the studies (each timeout runs its study in a process group of its own and passes
# the signal on); this script waits for them to end their own way, then packs the run folder as usual.
trap 'echo "study.sh: Ctrl-C passed on to the studies"; kill -INT "${pids[@]}" 2>/dev/null' INT
for p in "${pids[@]}"; do
  wait "$p"; rc=$?
  while kill -0 "$p" 2>/dev/null; do wait "$p"; rc=$?; done  # a wait the trap cut short
  echo "study.sh: exit $rc"
done
for f in "$OUT"/study-*.log; do echo "== $f"; tail -25 "$f"; done
# runs.tgz.sha256 (of the pieces joined) is written last, so a call that copies $OUT while this packs can tell
# finished pieces from pieces still being written: wait for the checksum. Other studies may still be writing.
bash scripts/gpu/pack.sh $RUNS "$OUT"
ls -la "$OUT"
