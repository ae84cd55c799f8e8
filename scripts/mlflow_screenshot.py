"""Serve a study's MLflow store with ``mlflow ui`` and photograph its runs page with headless Chromium.

    python scripts/mlflow_screenshot.py                      # the default store under ./runs (or $BDENSE_RUNS_DIR)
    python scripts/mlflow_screenshot.py --runs-dir /tmp/r1 --experiment-name bdense-tiny-sfd-nfe2-exp-k1-2-4

Starts ``mlflow ui --backend-store-uri sqlite:///<runs>/mlflow.db --default-artifact-root <runs>/mlartifacts``
on 127.0.0.1 with a free port, waits until it answers, runs ``chromium --headless --screenshot`` on the
experiment's runs page (the most recent experiment unless one is named) and on the page that compares its
trial runs (``-compare.png``: parameters and FID side by side), and stops the server. Chromium is
Debian's ``chromium`` package (``apt-get install -y chromium``). Prints the PNG's path; exit status 0 on success.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow ui did not answer at {url} within {timeout:.0f} s")


def trial_run_ids(store_uri: str, experiment_id: str, limit: int = 12) -> list[str]:
    from mlflow import MlflowClient

    runs = MlflowClient(tracking_uri=store_uri).search_runs(
        [experiment_id], "tags.`bdense.kind` = 'trial'", order_by=["attributes.start_time DESC"], max_results=limit)
    return [r.info.run_id for r in runs]


def pick_experiment(store_uri: str, name: str | None) -> str | None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    if name:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise SystemExit(f"error: no experiment named {name!r} in {store_uri}")
        return exp.experiment_id
    exps = [e for e in client.search_experiments() if e.name != "Default"]
    if not exps:
        return None
    return max(exps, key=lambda e: e.creation_time or 0).experiment_id


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("error: Chromium not found; install it with 'apt-get install -y chromium'")


def screenshot(url: str, out: Path, size: str, budget_ms: int) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        cmd = [
            find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--screenshot={out}", f"--window-size={size}", f"--virtual-time-budget={budget_ms}", url,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    default_runs = Path(os.environ.get("BDENSE_RUNS_DIR") or "runs")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=default_runs, help="run folder of the study (default: %(default)s)")
    p.add_argument("--backend-store-uri", default=None, help="default: sqlite:///<runs-dir>/mlflow.db")
    p.add_argument("--artifact-root", default=None, help="default: <runs-dir>/mlartifacts")
    p.add_argument("--experiment-name", default=None, help="default: the newest experiment")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: <runs-dir>/mlflow-ui.png)")
    p.add_argument("--filter", default="tags.`bdense.kind` = 'trial'",
                   help="MLflow search filter of the runs shown ('' for all runs, nested) (default: %(default)s)")
    p.add_argument("--window-size", default="1600,900")
    p.add_argument("--runs-page-only", action="store_true", help="skip the second shot (the trial runs compared)")
    p.add_argument("--wait", type=float, default=120, help="seconds to wait for the server (default: %(default)s)")
    args = p.parse_args(argv)

    runs = args.runs_dir.resolve()
    store = args.backend_store_uri or f"sqlite:///{runs / 'mlflow.db'}"
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///"):]).exists():
        print(f"error: no MLflow store at {store}; run a study first", file=sys.stderr)
        return 2
    artifacts = args.artifact_root or str(runs / "mlartifacts")
    out = (args.out or runs / "mlflow-ui.png").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    experiment_id = pick_experiment(store, args.experiment_name)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--default-artifact-root", artifacts,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        cwd=runs,  # a published store (analysis.publish) keeps artifact paths relative to its folder
    )
    try:
        wait_until_serving(f"{base}/health", server, args.wait)
        page = f"{base}/#/experiments"
        if experiment_id:  # the trial runs, best FID first; MLflow folds child runs under their parent only
            # when the list is sorted by start time, so this order also shows them flat, one row per trial
            query = urllib.parse.urlencode({"searchFilter": args.filter, "orderByKey": "metrics.`fid`",
                                            "orderByAsc": "true"}, quote_via=urllib.parse.quote)
            page = f"{base}/#/experiments/{experiment_id}/runs?{query}" if args.filter else \
                f"{base}/#/experiments/{experiment_id}/runs"
        screenshot(page, out, args.window_size, 15000)
        shots = [out]
        ids = trial_run_ids(store, experiment_id) if experiment_id else []
        if ids and not args.runs_page_only:  # the trials side by side: params and metrics (FID) per run
            compare = out.with_name(out.stem + "-compare" + out.suffix)
            query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment_id])},
                                           quote_via=urllib.parse.quote)
            screenshot(f"{base}/#/compare-runs?{query}", compare, args.window_size, 15000)
            shots.append(compare)
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
    if not out.exists() or out.stat().st_size == 0:
        print("error: Chromium wrote no screenshot", file=sys.stderr)
        return 1
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
