"""MLflow records of a study: one parent run per study, one nested run per trial, one run for the teacher.

Everything goes through ``MlflowClient`` with explicit run ids (no global "active run"), so several runs can
be open at once and several worker processes can write to one store. Per-step metrics are buffered and
sent with ``log_batch``. The parent run is found again on resume through the study's user attribute
``mlflow_parent_run_id`` (or its ``optuna_study_name`` tag); the trial run carries the tag
``optuna_trial_number`` and the trial holds the run id in its user attribute ``mlflow_run_id``.

What the MLflow UI (3.x) shows without configuring anything:
- Experiments are created as model-training experiments (tag ``mlflow.experimentKind`` =
  ``custom_model_development``). MLflow 3.17's UI picks its GenAI or model-training view from the sidebar toggle
  (``?workflowType=`` in the URL, else the browser's last choice, GenAI at first), so :func:`runs_page_url` links
  carry ``workflowType=machine_learning``.
- Each experiment holds a saved runs-table view (``mlflow.sharedViewState.bdense-trials``): the trial runs, best
  FID first, with FID, KID, K, a, b, NFE and the training length as columns. ``runs_page_url`` opens it.
- A trial run's name carries the same facts (:func:`trial_run_name`), so even the plain runs table, which shows
  only run names, dates and durations, reads e.g. ``FID 23.31 K=4 a=0.976 b=1.27 NFE2 80it #17``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .contract import TAG_KIND as KIND_TAG, TAG_PARENT as PARENT_TAG, TAG_RUN_NAME as RUN_NAME_TAG
from .contract import TAG_STUDY as STUDY_TAG, TAG_TRIAL as TRIAL_TAG
from .mlflow_sqlite import first_open

MAX_BATCH = 900  # MLflow accepts 1000 metrics per log_batch
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow's experiment type: GenAI or model training
MODEL_TRAINING = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the experiment's description in the UI
VIEW_KEY = "bdense-trials"  # the saved runs-table view of every experiment (viewStateShareKey)
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
TRIAL_FILTER = f"tags.`{KIND_TAG}` = 'trial'"
# the runs-table columns of that view: (kind, key as logged by the objective)
TRIAL_COLUMNS = (("metrics", "fid"), ("metrics", "kid"), ("params", "K"), ("params", "fitted_a"),
                 ("params", "fitted_b"), ("params", "nfe"), ("params", "iterations"), ("params", "role"),
                 ("attributes", "Duration"))


def quiet_logs() -> None:
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _retry(fn: Callable[[], Any], tries: int = 8) -> Any:
    """Call ``fn``, retrying briefly when SQLite reports a lock held by another worker process."""
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            if "locked" not in str(e).lower() or attempt == tries - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def trial_run_name(number: int, branches: int, a: float, b: float, nfe: int, iterations: int,
                   fid: float | None = None, kid: float | None = None, weights: list[float] | None = None) -> str:
    """A trial run's name with what a researcher sorts and compares by, most telling first (the UI cuts long
    names): ``FID 23.31 K=4 a=0.976 b=1.27 NFE2 80it #17`` once scored, without the scores while it runs.
    With ``weights`` (free per-branch weights) they replace a and b."""
    scores = (f"FID {fid:.2f} " if fid is not None else "") + (f"KID {kid:.4f} " if kid is not None else "")
    schedule = (f"w={','.join(f'{w:.2g}' for w in weights)}" if weights is not None else f"a={a:.3g} b={b:.3g}")
    if branches == 1 and weights is None:
        schedule = "baseline"  # K = 1: (a, b) only scale the loss
    return f"{scores}K={branches} {schedule} NFE{nfe} {iterations}it #{number}"


def trial_tags(branches: int, a: float, b: float, nfe: int, iterations: int, role: str, **extra: Any) -> dict[str, str]:
    """Tags of a trial run (searchable, e.g. ``tags.K = '4'``; shown in the run's page)."""
    tags = {"K": branches, "a": f"{a:.6g}", "b": f"{b:.6g}", "nfe": nfe, "iterations": iterations, "role": role}
    tags.update(extra)
    return {k: str(v) for k, v in tags.items()}


def trials_view_state(columns=TRIAL_COLUMNS) -> dict:
    """The saved runs-table view: trial runs only, best FID first, ``columns`` selected."""
    return {"searchFilter": TRIAL_FILTER, "orderByKey": "metrics.`fid`", "orderByAsc": True,
            "selectedColumns": [f"{kind}.`{key}`" for kind, key in columns]}


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's trials in the model-training view, with the saved columns."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"a.b": "value"}`` with MLflow-safe string values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            text = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
            out[key] = text[:5000]
    return out


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line."""


def _check_local(uri: str, artifact_root: Path | None) -> None:
    """An SQLite or file store: its folder and the artifact folder must be writable (checked, not created late)."""
    import os

    if uri.startswith("sqlite:"):
        db = uri.split(":///", 1)[1] if ":///" in uri else ""
        folders = [Path(db).expanduser().parent] if db and db != ":memory:" else []
    elif uri.startswith("file:"):
        folders = [Path(uri.split("file:", 1)[1].lstrip("/") and "/" + uri.split("file:", 1)[1].lstrip("/"))]
    else:
        folders = [Path(uri)]
    if artifact_root is not None:
        folders.append(Path(artifact_root))
    for folder in folders:
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise TrackingError(f"folder {folder} cannot be written; choose another --runs-dir or --mlflow-uri")


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """An MLflow tracking server answers its /health endpoint within ``timeout`` seconds."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the user's own server
            if r.status != 200:
                raise TrackingError(f"the server answered {r.status} at /health")
    except urllib.error.HTTPError as e:
        raise TrackingError(f"the server answered {e.code} at /health; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"no MLflow server answers ({reason}); start one with `mlflow server` or fix the URI") from None


class Tracker:
    """One MLflow tracking store and one experiment (named like the study)."""

    @classmethod
    def open(cls, tracking_uri: str, artifact_root: Path | None = None) -> "Tracker":
        """A tracker whose store was checked first: a server answers, a local folder is writable."""
        import os

        if tracking_uri.startswith(("http://", "https://")):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
            _check_server(tracking_uri)
        elif is_local_store(tracking_uri):
            _check_local(tracking_uri, artifact_root)
        try:
            with first_open(tracking_uri):  # a new SQLite store: one process creates its schema (mlflow_sqlite.py)
                tracker = cls(tracking_uri, artifact_root)
                tracker.client.search_experiments(max_results=1)
        except TrackingError:
            raise
        except Exception as e:  # noqa: BLE001 - any client error means the store is unusable
            text = str(e).strip().splitlines()
            raise TrackingError(text[0] if text else type(e).__name__) from None
        return tracker

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        quiet_logs()
        from mlflow import MlflowClient

        quiet_logs()
        self.uri = tracking_uri
        self.artifact_root = Path(artifact_root) if artifact_root is not None and is_local_store(tracking_uri) else None
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id: str | None = None

    # -- experiment and parent run -------------------------------------------------------------------
    def use_experiment(self, name: str) -> str:
        """The experiment ``name`` (created, or restored if deleted), marked for model training and holding the
        trials view (:func:`runs_page_url`); an existing experiment gets the tags it lacks."""
        exp = _retry(lambda: self.client.get_experiment_by_name(name))
        if exp is None:
            location = None
            if self.artifact_root is not None:
                safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
                location = (self.artifact_root / safe).resolve().as_uri()
            try:
                self.experiment_id = _retry(lambda: self.client.create_experiment(
                    name, artifact_location=location, tags=self.experiment_tags(name)))
            except Exception:  # another process created it at the same moment
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            for key, value in self.experiment_tags(name).items():
                if key not in exp.tags:  # e.g. a store from before these tags; never overwrite a user's choice
                    _retry(lambda k=key, v=value: self.client.set_experiment_tag(exp.experiment_id, k, v))
        return self.experiment_id

    @staticmethod
    def experiment_tags(name: str) -> dict[str, str]:
        """Experiment tags: model-training kind, the trials view and a description saying how to open it."""
        note = (f"Optuna study `{name}` of B-DENSE distillation: one run per trial (nested under the study's run), "
                f"the teacher's run, the study's run. The trials table with FID, KID, K, a, b, NFE and the training "
                f"length as columns, best FID first: add `?workflowType=machine_learning&viewStateShareKey="
                f"{VIEW_KEY}` to this experiment's runs page.")
        return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, VIEW_TAG: json.dumps(trials_view_state()), NOTE_TAG: note}

    def _run_exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - not in this store
            return False
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage == "active"

    def find_runs(self, kind: str, **tags: str) -> list:
        parts = [f"tags.`{KIND_TAG}` = '{kind}'"] + [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        return _retry(lambda: self.client.search_runs([self.experiment_id], " and ".join(parts), max_results=1000))

    def parent_run(self, study_name: str, known_run_id: str | None, params: dict, create: bool = True) -> str | None:
        """The study's parent run: the known one, else one tagged with the study name, else a new one."""
        if self._run_exists(known_run_id):
            run_id = known_run_id
        else:
            runs = self.find_runs("study", **{STUDY_TAG: study_name})
            if runs:
                run_id = sorted(runs, key=lambda r: r.info.start_time)[0].info.run_id
            elif create:
                run = _retry(lambda: self.client.create_run(
                    self.experiment_id, run_name=f"study {study_name}",
                    tags={KIND_TAG: "study", STUDY_TAG: study_name},
                ))
                run_id = run.info.run_id
                self.log_params(run_id, params)
            else:
                return None
        return run_id

    # -- generic logging -----------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 90):
            _retry(lambda chunk=items[i:i + 90]: self.client.log_batch(run_id, params=chunk))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(items), MAX_BATCH):
            _retry(lambda chunk=items[i:i + MAX_BATCH]: self.client.log_batch(run_id, metrics=chunk))

    def log_series(self, run_id: str, key: str, values: list[float], first_step: int = 1) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values) if math.isfinite(float(v))]
        for i in range(0, len(items), MAX_BATCH):
            _retry(lambda chunk=items[i:i + MAX_BATCH]: self.client.log_batch(run_id, metrics=chunk))

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_json(self, run_id: str, name: str, obj: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, default=str))
            self.log_artifact(run_id, path)

    def set_status(self, run_id: str, status: str) -> None:
        """``FINISHED``, ``FAILED``, ``KILLED`` or ``RUNNING`` (reopening a parent run on resume)."""
        if status == "RUNNING":
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        else:
            _retry(lambda: self.client.set_terminated(run_id, status=status))

    def finish_study(self, parent_run_id: str, summary: dict, ok: bool) -> None:
        """The study's summary on its parent run, which ends FINISHED (or FAILED)."""
        metrics = {"n_trials": summary["trials"], "n_complete": summary["states"].get("complete", 0)}
        head = summary.get("headline") or {}
        if head.get("best"):
            metrics["best_fid"] = head["best"]["mean"]
        if head.get("baseline"):
            metrics["baseline_k1_fid"] = head["baseline"]["mean"]
        if head.get("improvement"):
            metrics["improvement_fid"] = head["improvement"]["delta"]
        try:
            self.log_metrics(parent_run_id, metrics, step=summary["trials"])
            self.log_json(parent_run_id, "summary.json", summary)
        finally:
            self.set_status(parent_run_id, "FINISHED" if ok else "FAILED")

    # -- the teacher's run ---------------------------------------------------------------------------
    def teacher_run(self, teacher, study_name: str, parent_run_id: str | None) -> str:
        """The teacher's own run (one per teacher per experiment): config, loss curve and wall time."""
        runs = self.find_runs("teacher", teacher_key=teacher.key)
        if runs:
            return runs[0].info.run_id
        from bdense_core.runtime import to_jsonable

        tags = {KIND_TAG: "teacher", "teacher_key": teacher.key, STUDY_TAG: study_name,
                "from_cache": str(bool(getattr(teacher, "from_cache", False))).lower()}
        if parent_run_id:
            tags["bdense.study_run_id"] = parent_run_id
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=f"teacher {teacher.key}", tags=tags))
        run_id = run.info.run_id
        self.log_params(run_id, {"teacher": to_jsonable(teacher.config), "teacher_key": teacher.key})
        self.log_series(run_id, "teacher_loss", list(teacher.loss_history))
        self.log_metrics(run_id, {"wall_time_s": teacher.wall_time_s, "train_steps": len(teacher.loss_history)})
        self.log_json(run_id, "teacher_config.json", to_jsonable(teacher.config))
        try:  # a look at what the students are distilled from (one sampler run on 32 images)
            with tempfile.TemporaryDirectory() as tmp:
                grid = save_sample_grid(teacher.sample(32, seed=7, batch_size=32), Path(tmp) / "teacher_samples.png")
                self.log_artifact(run_id, grid)
        except Exception:  # noqa: BLE001 - the grid is a convenience
            pass
        self.set_status(run_id, "FINISHED")
        return run_id

    # -- trial runs ---------------------------------------------------------------------------------------
    def start_trial(self, study_name: str, parent_run_id: str, trial_number: int, point, role: str,
                    params: dict, teacher_key: str) -> "TrialRun":
        """A trial's nested run, named and tagged so that the runs table shows what it trained."""
        fa, fb = point.fitted_ab
        facts = dict(number=trial_number, branches=point.branches, a=fa, b=fb, nfe=int(params.get("nfe", 0)),
                     iterations=int(params.get("iterations", 0)),
                     weights=point.weight_values() if params.get("weights_mode") == "free" else None)
        tags = {KIND_TAG: "trial", STUDY_TAG: study_name, TRIAL_TAG: str(trial_number), PARENT_TAG: parent_run_id,
                "teacher_key": teacher_key,
                **trial_tags(point.branches, fa, fb, facts["nfe"], facts["iterations"], role,
                             fidelity=params.get("fidelity", "screen"))}
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=trial_run_name(**facts), tags=tags))
        trial_run = TrialRun(self, run.info.run_id)
        trial_run.facts = facts
        self.log_params(run.info.run_id, params)
        return trial_run

    def close_runs(self, run_ids: list[str], status: str, reason: str) -> int:
        """Close the given runs that are still RUNNING (trials another process failed); returns how many."""
        n = 0
        for run_id in run_ids:
            try:
                if self.client.get_run(run_id).info.status == "RUNNING":
                    self.set_tags(run_id, {"fail_reason": reason[:4000]})
                    self.set_status(run_id, status)
                    n += 1
            except Exception:  # noqa: BLE001 - the run lives in another store, or is gone
                pass
        return n

    def trial_runs(self, study_name: str) -> list:
        return self.find_runs("trial", **{STUDY_TAG: study_name})


class TrialRun:
    """A trial's MLflow run with a buffer for per-step metrics (sent every ``flush_every`` records)."""

    def __init__(self, tracker: Tracker, run_id: str, flush_every: int = 50, flush_seconds: float = 15.0):
        self.tracker = tracker
        self.run_id = run_id
        self.facts: dict = {}  # what trial_run_name shows, known when the run started
        self._buffer: list = []
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def log_step(self, record: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in record.items():
            if key == "step" or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                continue
            self._buffer.append(Metric(key, float(value), now, int(step)))
        if len(self._buffer) >= self._flush_every * 4 or time.monotonic() - self._last_flush > self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        items, self._buffer = self._buffer, []
        for i in range(0, len(items), MAX_BATCH):
            _retry(lambda chunk=items[i:i + MAX_BATCH]: self.tracker.client.log_batch(self.run_id, metrics=chunk))
        self._last_flush = time.monotonic()

    def rename(self, name: str) -> None:
        """Set the run's name, e.g. :func:`trial_run_name` with the scores once the trial is scored."""
        _retry(lambda: self.tracker.client.update_run(self.run_id, name=name))

    def finish(self, status: str = "FINISHED") -> None:
        try:
            self.flush()
        finally:
            self.tracker.set_status(self.run_id, status)

    def log_round(self, seed: int, round_index: int, student_steps: int, fid: float, kid: float) -> None:
        """Progressive distillation: one seed's FID and KID after a halving round (step = the round)."""
        self.tracker.log_metrics(self.run_id, {f"fid_round_seed_{seed}": fid, f"kid_round_seed_{seed}": kid,
                                               f"student_steps_seed_{seed}": student_steps}, step=round_index)

    def log_seed(self, seed: int, row: dict, images) -> None:
        """One trained seed: its FID and KID, and a grid of its samples."""
        self.tracker.log_metrics(self.run_id, {f"fid_seed_{seed}": row["fid"], f"kid_seed_{seed}": row["kid"]})
        with tempfile.TemporaryDirectory(prefix="bdense-trial-") as tmp:
            self.tracker.log_artifact(self.run_id, save_sample_grid(images, Path(tmp) / f"samples_seed{seed}.png"))

    def finish_trial(self, final: dict, point, config, teacher, per_seed: list[dict], trial) -> None:
        """The trial's results, its branch-weight plot and its resolved config; then the run is FINISHED."""
        from bdense_core.runtime import to_jsonable

        self.tracker.log_metrics(self.run_id, {k: v for k, v in final.items() if not isinstance(v, list)})
        if self.facts:
            self.rename(trial_run_name(**self.facts, fid=final.get("fid"), kid=final.get("kid")))
        fa, fb = point.fitted_ab
        with tempfile.TemporaryDirectory(prefix="bdense-trial-") as tmp:
            title = f"trial {trial.number} ({trial.user_attrs.get('role')}): K={point.branches}, fitted a={fa:.3g}, b={fb:.3g}"
            plot = plot_branch_weights(point.weight_values(), (fa, fb), config.weights_mode, title,
                                       Path(tmp) / "branch_weights.png")
            self.tracker.log_artifact(self.run_id, plot)
        resolved = dict(
            trial=dict(number=trial.number, params=trial.params, role=trial.user_attrs.get("role"),
                       weights=point.weight_values(), fitted_a=fa, fitted_b=fb),
            study=config.describe(), teacher_key=teacher.key, teacher=to_jsonable(teacher.config),
            distill=[to_jsonable(r["config"]) for r in per_seed],
            results=[{k: v for k, v in r.items() if k != "config"} for r in per_seed],
        )
        self.tracker.log_json(self.run_id, "config.json", resolved)
        self.finish("FINISHED")

    def fail(self, reason: str, status: str, tb: str | None = None) -> None:
        """Close the run FAILED or KILLED with the reason; never raises (the original error matters more)."""
        try:
            self.tracker.set_tags(self.run_id, {"fail_reason": reason[:4000]})
            if tb:
                self.tracker.log_json(self.run_id, "traceback.json", {"traceback": tb})
        except Exception:  # noqa: BLE001
            pass
        try:
            self.finish(status)
        except Exception:  # noqa: BLE001
            pass


# -- artifacts ---------------------------------------------------------------------------------------
def save_sample_grid(images, path: Path, nrow: int = 8) -> Path:
    """Images in [-1, 1] ``[N, C, H, W]`` -> one PNG grid (8-bit greyscale for one-channel images)."""
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid((images.detach().float().cpu() + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    if images.shape[1] == 1:  # make_grid repeats one channel three times; keep one (half the PNG size)
        pixels = pixels[..., 0]
    Image.fromarray(pixels).save(path, optimize=True)
    return path


def plot_branch_weights(weights: list[float], fitted_ab: tuple[float, float], mode: str, title: str, path: Path) -> Path:
    """Bar plot of w_1..w_K; for free weights also the least-squares exponential b*exp(a*k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = np.arange(1, len(weights) + 1)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    ax.bar(k, weights, color="#4C72B0", label="w_k")
    a, b = fitted_ab
    if mode == "free" and len(weights) > 1:
        fine = np.linspace(1, len(weights), 50)
        ax.plot(fine, b * np.exp(a * fine), color="#DD8452", label=f"fit b·exp(a·k): a={a:.3g}, b={b:.3g}")
        ax.legend(fontsize=7)
    ax.set_xticks(k)
    ax.set_xlabel("branch k (k = K is the endpoint)")
    ax.set_ylabel("loss weight w_k")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
