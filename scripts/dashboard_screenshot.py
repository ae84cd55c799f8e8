"""Serve a study's Optuna storage with optuna-dashboard and photograph the study's page with headless Chromium.

    python scripts/dashboard_screenshot.py                         # ./runs/optuna-journal.log (or $BDENSE_RUNS_DIR)
    python scripts/dashboard_screenshot.py --storage journal:results/fmnist-sfd-nfe2/optuna-journal.log \\
        --study fmnist-sfd-nfe2 --out results/screenshots/optuna-dashboard.png

The storage is given as ``study/run.py --storage`` takes it: ``journal:PATH`` or a plain journal file path,
``sqlite:///PATH``, ``postgresql://...``; :func:`dashboard_storage` turns it into optuna-dashboard's argument
(optuna-dashboard takes a journal file as its bare path). Starts ``optuna-dashboard`` (the ``dashboard`` extra)
on 127.0.0.1 with a free port, waits for its API, finds the study's id there (the only study unless one is
named), photographs ``/dashboard/studies/<id>`` (the optimisation history with every trial, hyperparameter
importance and the timeline) and stops the server. Chromium is Debian's ``chromium`` package. Prints the PNG's
path and the study's trial count; exit status 0 on success, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import free_port, screenshot, serve  # noqa: E402

SQLITE_HEADER = b"SQLite format 3\x00"


class UsageError(Exception):
    pass


def dashboard_storage(storage: str) -> str:
    """optuna-dashboard's storage argument for a storage as ``study/run.py --storage`` takes it."""
    if storage.startswith("journal:"):
        storage = storage[len("journal:"):]
    elif "://" in storage:
        if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
            raise UsageError(f"no SQLite storage at {storage[len('sqlite:///'):]}; run a study first")
        return storage
    path = Path(storage)
    if not path.is_file():
        raise UsageError(f"no Optuna journal file at {path}; run a study first or pass --storage")
    with path.open("rb") as f:
        if f.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
            return f"sqlite:///{path.resolve()}"
    return str(path.resolve())


def dashboard_executable() -> str:
    """The ``optuna-dashboard`` command next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "optuna-dashboard"
    found = str(here) if here.exists() else shutil.which("optuna-dashboard")
    if not found:
        raise UsageError("optuna-dashboard is not installed; pip install -e '.[dashboard]' (or make setup)")
    return found


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def pick_study(summaries: list[dict], name: str | None) -> dict:
    names = [s["study_name"] for s in summaries]
    if name is None:
        if len(summaries) != 1:
            raise UsageError(f"the storage holds {len(summaries)} studies ({', '.join(names) or 'none'}); pass --study")
        return summaries[0]
    for s in summaries:
        if s["study_name"] == name:
            return s
    raise UsageError(f"no study {name!r} in the storage; it holds {', '.join(names) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    runs = Path(os.environ.get("BDENSE_RUNS_DIR") or "runs")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", default=f"journal:{runs / 'optuna-journal.log'}",
                   help="journal:PATH, a journal file, sqlite:///PATH or postgresql://... (default: %(default)s)")
    p.add_argument("--study", default=None, help="study name (default: the storage's only study)")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: <runs>/optuna-dashboard.png)")
    p.add_argument("--window-size", default="1600,1000")
    p.add_argument("--budget-ms", type=int, default=20000, help="page time before the shot (default: %(default)s)")
    p.add_argument("--wait", type=float, default=120, help="seconds to wait for the server (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        storage = dashboard_storage(args.storage)
        exe = dashboard_executable()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = (args.out or runs / "optuna-dashboard.png").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{free_port()}"
    port = base.rsplit(":", 1)[1]
    with serve([exe, storage, "--host", "127.0.0.1", "--port", port, "--quiet"], f"{base}/api/studies",
               args.wait, what="optuna-dashboard"):
        try:
            study = pick_study(get_json(f"{base}/api/studies")["study_summaries"], args.study)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        n_trials = len(get_json(f"{base}/api/studies/{study['study_id']}")["trials"])
        screenshot(f"{base}/dashboard/studies/{study['study_id']}", out, args.window_size, args.budget_ms)
    print(out)
    print(f"study {study['study_name']!r}: {n_trials} trials")
    return 0


if __name__ == "__main__":
    sys.exit(main())
