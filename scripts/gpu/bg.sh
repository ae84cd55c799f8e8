#!/usr/bin/env bash
# Long GPU jobs that outlive one device call (each call is at most 10 minutes; the machine stays while calls follow
# each other within its idle time):
#   bash scripts/gpu/bg.sh start NAME CMD...   start CMD in its own session (setsid), output in /tmp/bd/jobs/NAME.log
#   bash scripts/gpu/bg.sh wait NAME SECONDS   wait until NAME ends or SECONDS pass; print its log's tail
#   bash scripts/gpu/bg.sh status NAME         running or ended (with its exit status) and the log's tail
#   bash scripts/gpu/bg.sh stop NAME           Ctrl-C for NAME (SIGINT to its process group): a study marks its running
#                                              trials failed and study.sh still packs the run folder; then `wait`
#   bash scripts/gpu/bg.sh pull FILE...        copy FILEs that exist into $OUT (over 15 MB: 15 MB pieces FILE.part.*)
# End every call that waits on a job with a pull of what the job has finished: the machine, /tmp/bd with it, goes
# back 30 s after a call unless the next one comes, and only $OUT comes back. A study.sh pack is finished when its
# runs.tgz.sha256 is there (copying the pieces before that brings back a cut-short pack); while studies still run,
# `bash scripts/gpu/pack.sh /tmp/bd/runs $OUT` brings back their run folder as it stands. A teacher's training checkpoint:
#   pull /tmp/bd/cache/teachers/*/checkpoint.pt /tmp/bd/cache/teachers/*/config.json
# brings back what scripts/gpu/stage.sh turns into that checkpoint again (see there: .gpu/teacher-KEY/).
# The job is tracked by its pid file, not by matching command lines (a wait loop that matches a string which its
# own command line contains waits forever; a `pkill -f PATTERN` in a device call kills that call's own shell, whose
# command line contains PATTERN: use `stop`). Source scripts/gpu/stage.sh first so the job inherits its exports.
set -uo pipefail
D=${BDENSE_STAGE_DIR:-/tmp/bd}/jobs
mkdir -p $D
verb=${1:?start, wait, status, stop or pull}
if [ "$verb" = pull ]; then
  shift
  for f in "$@"; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
      split -b 15m "$f" "$OUT/$b.part." && echo "$(sha256sum < "$f" | cut -d' ' -f1)  $b" > "$OUT/$b.sha256"
      ls "$OUT/$b".part.* | wc -l > "$OUT/$b.npieces"
    else cp "$f" "$OUT/"; fi
  done
  ls -la "$OUT"; exit 0
fi
name=${2:?job name}; shift 2
alive() { [ -f $D/$name.pid ] && kill -0 "$(cat $D/$name.pid)" 2>/dev/null; }
show() { if alive; then echo "$name: running (pid $(cat $D/$name.pid))"; else echo "$name: ended, exit $(cat $D/$name.rc 2>/dev/null || echo '?')"; fi
         tail -n "${TAIL:-5}" $D/$name.log 2>/dev/null; }
case $verb in
  start)
    if alive; then echo "$name is already running (pid $(cat $D/$name.pid))"; exit 1; fi
    rm -f $D/$name.rc
    # setsid: the job leads its own process group (what `stop` signals). A background command starts with SIGINT
    # ignored, which bash cannot undo, so env restores its default; the trap keeps this wrapper alive through a
    # Ctrl-C so that it records the job's exit status (a trap with a command is reset to default in the job).
    setsid env --default-signal=INT bash -c 'trap : INT; "$@"; echo $? > '"$D/$name.rc" _ "$@" > $D/$name.log 2>&1 < /dev/null &
    echo $! > $D/$name.pid
    echo "$name: started (pid $!, log $D/$name.log)";;
  wait)
    end=$(( $(date +%s) + ${1:?seconds} ))
    while alive && [ "$(date +%s)" -lt $end ]; do sleep 2; done
    show;;
  status) show;;
  stop)
    if alive; then kill -INT -- "-$(cat $D/$name.pid)" && echo "$name: Ctrl-C sent (bg.sh wait $name SECONDS to see it end)"
    else show; fi;;
  *) echo "unknown verb $verb: start, wait, status, stop or pull"; exit 2;;
esac
