"""The live progress line (trial i/N, best FID so far, ETA) and the table printed at the end of a study."""

from __future__ import annotations

import math
import shlex
import statistics
import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import space
from .cli import StudyConfig
from .storage import storage_location
from .tracking import is_local_store


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe_point(t: FrozenTrial) -> str:
    p = t.params
    if "K" not in p:
        return ""
    if "a" in p:
        return f"K={p['K']} a={p['a']:.3g} b={p['b']:.3g}"
    ws = [p[f"w{j}"] for j in range(1, int(p["K"]) + 1) if f"w{j}" in p]
    return f"K={p['K']} w=" + ",".join(f"{w:.2g}" for w in ws)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial with the lowest FID at the study's own NFE.

    Trials of the nfe ablation run at other NFEs (their ``nfe`` user attribute); a student with more steps is
    not a better setting of K, a and b, so they never count as the study's best."""
    from analysis.ablation import runs_at_nfe

    nfe = study.user_attrs.get("nfe")
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and runs_at_nfe(t, nfe)]
    return min(done, key=lambda t: t.value) if done else None


class ProgressReporter:
    """A rich progress bar on a terminal, one plain line per finished trial elsewhere (logs, tests)."""

    def __init__(self, n_trials: int, study: optuna.Study, live: bool | None = None, stream=None):
        self.n = n_trials
        self.study = study
        self.done = 0
        self.started = time.monotonic()
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._progress = None
        self._task = None
        self._step_task = None
        self._seen: set[int] = set()

    def __enter__(self) -> "ProgressReporter":
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("trials", total=self.n, info=self._best_text())
            self._step_task = self._progress.add_task("  steps", total=1, info="", visible=False)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _best_text(self) -> str:
        best = best_trial(self.study)
        return f"best FID {best.value:.3f} (#{best.number})" if best is not None else "best FID -"

    def eta(self) -> float | None:
        if self.done == 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * max(0, self.n - self.done)

    def on_step(self, trial_number: int, step: int, total: int, rec: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._step_task, total=total, completed=step, visible=True,
                                  description=f"  trial #{trial_number}", info=f"loss {rec.get('loss', float('nan')):.4g}")

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback (also called by the worker supervisor for trials finished by other processes)."""
        if trial.number in self._seen:
            return
        self._seen.add(trial.number)
        self.done += 1
        if self._progress is not None:
            self._progress.update(self._task, completed=min(self.done, self.n), info=self._best_text())
            self._progress.update(self._step_task, visible=False)
            if trial.state != TrialState.COMPLETE:
                self._progress.console.print(f"trial #{trial.number} {trial.state.name}: "
                                             f"{trial.user_attrs.get('fail_reason', '')}")
            return
        if trial.state == TrialState.COMPLETE:
            result = f"FID {trial.value:.3f}"
        else:
            result = f"{trial.state.name}: {trial.user_attrs.get('fail_reason', '')}"
        role = trial.user_attrs.get("role", "search")
        elapsed = time.monotonic() - self.started
        print(
            f"[trial {self.done}/{self.n}] #{trial.number} {role} {describe_point(trial)}  {result}  | "
            f"{self._best_text()}  | {_fmt_time(elapsed)} elapsed, ETA {_fmt_time(self.eta())}",
            file=self.stream, flush=True,
        )


def mlflow_ui_command(config: StudyConfig) -> str:
    if is_local_store(config.mlflow_uri):
        return (f"mlflow ui --backend-store-uri {shlex.quote(config.mlflow_uri)} "
                f"--default-artifact-root {shlex.quote(str(config.artifact_root))}")
    return f"open {config.mlflow_uri} in a browser (an MLflow tracking server)"


def study_summary(study: optuna.Study, config: StudyConfig, ran_now: int, wall_s: float) -> dict:
    """The numbers of the final table as a dict (also stored as the parent run's summary.json)."""
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]

    def baseline(role: str) -> FrozenTrial | None:
        rows = [t for t in complete if t.user_attrs.get("role") == role]
        return min(rows, key=lambda t: t.value) if rows else None

    best, k1, uniform = best_trial(study), baseline(space.BASELINE_K1), baseline(space.BASELINE_UNIFORM)
    out: dict = dict(
        study=config.study_name, trials=len(trials), states=by_state, ran_now=ran_now, wall_time_s=wall_s,
        best=None, baseline_k1=None, baseline_uniform=None, improvement=None,
        optuna_storage=config.storage_url, mlflow_uri=config.mlflow_uri,
        mlflow_experiment_id=study.user_attrs.get("mlflow_experiment_id"),
        mlflow_parent_run_id=study.user_attrs.get("mlflow_parent_run_id"),
        teacher_key=study.user_attrs.get("teacher_key"), mlflow_ui=mlflow_ui_command(config),
    )
    for key, t in (("best", best), ("baseline_k1", k1), ("baseline_uniform", uniform)):
        if t is not None:
            out[key] = dict(number=t.number, role=t.user_attrs.get("role"), params=t.params, fid=t.value,
                            fid_std=t.user_attrs.get("fid_std"), fid_seeds=t.user_attrs.get("fid_seeds"),
                            mlflow_run_id=t.user_attrs.get("mlflow_run_id"))
    if best is not None and k1 is not None:
        delta = k1.value - best.value
        imp = dict(delta_fid=delta, relative=delta / k1.value if k1.value else float("nan"), spread=None)
        a, b = k1.user_attrs.get("fid_seeds") or [], best.user_attrs.get("fid_seeds") or []
        if len(a) == len(b) and len(a) > 1:  # same seeds in every trial: paired differences
            diffs = [x - y for x, y in zip(a, b)]
            imp["spread"] = statistics.stdev(diffs)
            imp["per_seed"] = diffs
        out["improvement"] = imp
    return out


def print_summary(summary: dict, config: StudyConfig, stream=None) -> None:
    from rich.console import Console
    from rich.table import Table

    stream = stream or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 140)
    table = Table(title=f"study {summary['study']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    s = summary["states"]
    table.add_row("trials", f"{summary['trials']} in the study ({s['complete']} complete, {s['pruned']} pruned, "
                            f"{s['fail']} failed, {s['running']} running, {s['waiting']} queued); "
                            f"{summary['ran_now']} finished by this command in {_fmt_time(summary['wall_time_s'])}")

    def row(label: str, key: str) -> None:
        t = summary[key]
        if t is None:
            table.add_row(label, "- (no complete trial yet)")
            return
        fid = f"{t['fid']:.3f}"
        std = t.get("fid_std")
        fid += f" ± {std:.3f}" if isinstance(std, (int, float)) and math.isfinite(std) else " (1 seed)"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        table.add_row(label, f"FID {fid}   trial #{t['number']} ({t['role']}): {params}")

    row("best trial", "best")
    row("baseline K=1", "baseline_k1")
    row("uniform weights", "baseline_uniform")
    imp = summary["improvement"]
    if imp is None:
        table.add_row("improvement", "- (needs a complete K=1 baseline and a best trial)")
    else:
        text = f"{imp['delta_fid']:+.3f} FID vs K=1 ({100 * imp['relative']:+.1f}%)"
        if imp["spread"] is not None:
            text += f", paired over seeds: sd {imp['spread']:.3f} ({len(imp['per_seed'])} seeds)"
        else:
            text += "; one seed per trial, no spread (use --seeds-per-trial 3 for one)"
        table.add_row("improvement", text)
    table.add_row("teacher", str(summary["teacher_key"]))
    table.add_row("Optuna storage", storage_location(summary["optuna_storage"]))
    table.add_row("MLflow", f"{summary['mlflow_uri']} (experiment {summary['mlflow_experiment_id']}, "
                            f"parent run {summary['mlflow_parent_run_id']})")
    table.add_row("artifacts", str(config.artifact_root) if is_local_store(config.mlflow_uri) else "on the server")
    table.add_row("open", summary["mlflow_ui"])
    console.print(table)
