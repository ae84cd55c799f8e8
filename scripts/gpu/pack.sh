#!/usr/bin/env bash
# Pack a run folder for the trip back, also while studies are writing to it:
#   bash scripts/gpu/pack.sh RUNS DEST
# writes DEST/runs.tgz.part.* (15 MB pieces), DEST/runs.tgz.npieces and, last, DEST/runs.tgz.sha256 (a pack
# without it is unfinished), the form scripts/gpu/study.sh restores from .gpu/runs/. It packs a snapshot: each
# Optuna journal up to its last complete line, each SQLite store (MLflow's) through SQLite's backup API, the rest
# copied; the caches (banks: GBs), lock files and SQLite's side files stay. Trials running at that moment are
# RUNNING in the snapshot: restored, the study's heartbeat marks them failed and they are retried.
# study.sh packs with it when its studies end; a device call that waits on a long chain runs it too, so that a
# machine lost mid-session (the call cut off, 30 s idle) costs at most what ran since the last wait call.
set -euo pipefail
RUNS=${1:?run folder}; DEST=${2:?destination folder}
# a wait call can come before study.sh has restored the run folder (session 16's did, while the banks were solved)
[ -d "$RUNS" ] || { echo "pack.sh: no run folder $RUNS yet; nothing packed"; exit 0; }
mkdir -p "$DEST"
snap=$(mktemp -d)
trap 'rm -rf "$snap"' EXIT
python3 - "$RUNS" "$snap" <<'EOF'
import os
import shutil
import sqlite3
import sys

src, dst = sys.argv[1:]
skip = (".lock", ".db-wal", ".db-shm", ".db-journal")
for name in sorted(os.listdir(src)):
    s, d = os.path.join(src, name), os.path.join(dst, name)
    if name == "cache" or name.endswith(skip):
        continue
    if os.path.isdir(s):
        shutil.copytree(s, d, symlinks=True, ignore=lambda _dir, names: [n for n in names if n.endswith(skip)])
    elif name.endswith(".db"):
        with sqlite3.connect(f"file:{s}?mode=ro", uri=True) as a, sqlite3.connect(d) as b:
            a.backup(b)
    elif "journal" in name:  # an Optuna journal: one JSON operation a line, the last maybe half written
        with open(s, "rb") as f:
            data = f.read()
        with open(d, "wb") as f:
            f.write(data[:data.rfind(b"\n") + 1])
    else:
        shutil.copy2(s, d)
EOF
rm -f "$DEST"/runs.tgz.part.* "$DEST/runs.tgz.sha256" "$DEST/runs.tgz.npieces"
(cd "$snap" && tar -czf - $(ls -A)) | split -b 15m - "$DEST/runs.tgz.part."
ls "$DEST"/runs.tgz.part.* | wc -l > "$DEST/runs.tgz.npieces"
cat "$DEST"/runs.tgz.part.* | sha256sum | cut -d' ' -f1 > "$DEST/runs.tgz.sha256"
