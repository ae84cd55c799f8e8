"""Serve a study's MLflow store with ``mlflow ui`` and photograph its trials table with headless Chromium.

    python scripts/mlflow_screenshot.py                      # the default store under ./runs (or $BDENSE_RUNS_DIR)
    python scripts/mlflow_screenshot.py --runs-dir /tmp/r1 --experiment-name bdense-tiny-sfd-nfe2-exp-k1-2-4

Starts ``mlflow ui --backend-store-uri sqlite:///<runs>/mlflow.db --default-artifact-root <runs>/mlartifacts``
on 127.0.0.1 with a free port, waits until it answers, and photographs the experiment's runs page (the most
recent experiment unless one is named) in MLflow's model-training view: the page that
``study.tracking.runs_page_url`` links to, i.e. the experiment's saved trials view (trial runs, best FID first,
FID, KID, K, a, b, NFE and iterations as columns; ``study.tracking`` creates it with the experiment;
``--add-view`` adds it to an experiment made before). An experiment without that view is shown with the same
filter and order but MLflow's default columns. A second shot (``-compare.png``) is the page that compares the
trial runs (parameters and FID side by side). Chromium is Debian's ``chromium`` package
(``apt-get install -y chromium``). Prints the PNGs' paths; exit status 0 on success, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from browser import free_port, screenshot, serve  # noqa: E402
from study.tracking import TRIAL_FILTER, VIEW_TAG, Tracker, runs_page_url  # noqa: E402


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
            print(f"error: no experiment named {name!r} in {store_uri}", file=sys.stderr)
            raise SystemExit(2)
        return exp.experiment_id
    exps = [e for e in client.search_experiments() if e.name != "Default"]
    if not exps:
        return None
    return max(exps, key=lambda e: e.creation_time or 0).experiment_id


def runs_page(base: str, store_uri: str, experiment_id: str, search_filter: str) -> str:
    """The saved trials view where the experiment has it, else the same filter and order in the URL."""
    from mlflow import MlflowClient

    if VIEW_TAG in MlflowClient(tracking_uri=store_uri).get_experiment(experiment_id).tags and \
            search_filter == TRIAL_FILTER:
        return runs_page_url(base, experiment_id)
    # MLflow folds child runs under their parent only when sorted by start time: sorted by FID they show flat
    query = {"workflowType": "machine_learning", "orderByKey": "metrics.`fid`", "orderByAsc": "true"}
    if search_filter:
        query["searchFilter"] = search_filter
    return f"{base}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def main(argv: list[str] | None = None) -> int:
    default_runs = Path(os.environ.get("BDENSE_RUNS_DIR") or "runs")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=default_runs, help="run folder of the study (default: %(default)s)")
    p.add_argument("--backend-store-uri", default=None, help="default: sqlite:///<runs-dir>/mlflow.db")
    p.add_argument("--artifact-root", default=None, help="default: <runs-dir>/mlartifacts")
    p.add_argument("--experiment-name", default=None, help="default: the newest experiment")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: <runs-dir>/mlflow-ui.png)")
    p.add_argument("--filter", default=TRIAL_FILTER,
                   help="MLflow search filter of the runs shown ('' for all runs, nested) (default: %(default)s)")
    p.add_argument("--add-view", action="store_true",
                   help="first give the experiment the tags study/tracking.py gives new ones (model-training kind, "
                        "the saved trials view): writes to the store")
    p.add_argument("--window-size", default="1900,1000")
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
    if args.add_view and experiment_id:
        tracker = Tracker(store)
        tracker.use_experiment(tracker.client.get_experiment(experiment_id).name)

    base = f"http://127.0.0.1:{free_port()}"
    shots = [out]
    with serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--default-artifact-root",
                artifacts, "--host", "127.0.0.1", "--port", base.rsplit(":", 1)[1]], f"{base}/health", args.wait,
               cwd=runs,  # a published store (analysis.publish) keeps artifact paths relative to its folder
               what="mlflow ui"):
        page = runs_page(base, store, experiment_id, args.filter) if experiment_id else f"{base}/#/experiments"
        screenshot(page, out, args.window_size, 15000)
        ids = trial_run_ids(store, experiment_id) if experiment_id else []
        if ids and not args.runs_page_only:  # the trials side by side: params and metrics (FID) per run
            compare = out.with_name(out.stem + "-compare" + out.suffix)
            query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment_id]),
                                            "workflowType": "machine_learning"}, quote_via=urllib.parse.quote)
            screenshot(f"{base}/#/compare-runs?{query}", compare, args.window_size, 15000)
            shots.append(compare)
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
