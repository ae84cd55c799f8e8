"""How long a training thread waits on MLflow's SQLite store when several workers log to it at once.

    python benchmarks/bench_tracking.py --store runs/mlflow.db --writers 3 --seconds 50 --backup-every 4

A study worker logs its students' records from the thread that queues the GPU work (``study.tracking.TrialRun``,
buffered and sent with ``log_batch``), so a store kept locked by another process stalls training. Each writer is a
process that logs the campaign's records into a copy of ``--store`` (or a new store): blocks of 60 records (20
iterations x 3 students), K = 1, 4, 6, ... branch losses per record, one block a second; with ``--backup-every``
another process copies the store through SQLite's backup API that often, as ``scripts/gpu/pack.sh`` does. It prints
each writer's mean and worst time a record, as ``TrialRun.log_step`` spends it (flushes included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCK = 60  # records a worker delivers at once: 20 iterations x 3 batched students


def writer(db: Path, branches: int, seconds: float) -> dict:
    """Log blocks of records into the store at ``db`` for ``seconds``; the time each ``log_step`` took."""
    import random

    from study.tracking import Tracker, TrialRun

    tracker = Tracker.open(f"sqlite:///{db}", str(db.parent / "artifacts"))
    name = "bench-tracking"
    experiment = tracker.client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = tracker.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another writer created it first
            experiment_id = tracker.client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    run = TrialRun(tracker, tracker.client.create_run(experiment_id).info.run_id)
    rng = random.Random(branches)
    times, step, end = [], 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(BLOCK):
            step += 1
            rec = {"step": step, "loss": rng.random(), "endpoint_l1": rng.random(),
                   **{f"loss_branch_{k + 1}": rng.random() for k in range(branches)}}
            t0 = time.perf_counter()
            run.log_step(rec, step)
            times.append(time.perf_counter() - t0)
        time.sleep(1.0)
    run.flush()
    return {"branches": branches, "records": len(times), "mean_s": sum(times) / len(times), "worst_s": max(times)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=None, help="an MLflow SQLite file to copy and log into (default: a new store)")
    p.add_argument("--writers", type=int, default=3, help="processes logging at once (K = 1, 4, 6, 1, 4, ...)")
    p.add_argument("--seconds", type=float, default=50.0, help="how long each writer logs")
    p.add_argument("--backup-every", type=float, default=0.0, metavar="S", help="copy the store every S seconds (0: never)")
    p.add_argument("--one", nargs=3, metavar=("DB", "K", "SECONDS"), help=argparse.SUPPRESS)  # a writer process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(writer(Path(args.one[0]), int(args.one[1]), float(args.one[2]))), flush=True)
        return 0
    if args.writers < 1 or args.seconds <= 0 or args.backup_every < 0:
        print("bench_tracking.py: error: give --writers >= 1, --seconds > 0 and --backup-every >= 0", file=sys.stderr)
        return 2
    if args.store and not Path(args.store).is_file():
        print(f"bench_tracking.py: error: no store at {args.store}; give an MLflow SQLite file or leave --store out",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bdense-tracking-") as tmp:
        db = Path(tmp) / "mlflow.db"
        if args.store:
            shutil.copy(args.store, db)
        else:  # one process creates the schema before the writers start
            from study.tracking import Tracker

            Tracker.open(f"sqlite:///{db}", str(Path(tmp) / "artifacts"))
        ks = [(1, 4, 6)[i % 3] for i in range(args.writers)]
        procs = [subprocess.Popen([sys.executable, __file__, "--one", str(db), str(k), str(args.seconds)],
                                  stdout=subprocess.PIPE, text=True) for k in ks]
        backups = 0
        while any(proc.poll() is None for proc in procs):
            if args.backup_every:
                time.sleep(args.backup_every)
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as a, sqlite3.connect(Path(tmp) / "snap.db") as b:
                    a.backup(b)
                backups += 1
            else:
                time.sleep(0.5)
        rows = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    print(f"{args.writers} writers, {args.seconds:.0f} s each, {backups} backups of the store "
          f"({'a copy of ' + args.store if args.store else 'a new store'}):")
    for r in rows:
        print(f"  K={r['branches']}: {r['records']:,} records, mean {1e3 * r['mean_s']:.2f} ms, "
              f"worst {1e3 * r['worst_s']:.0f} ms a record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
