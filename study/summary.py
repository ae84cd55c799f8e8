"""The live progress line (trial i/N, best so far, ETA) and the table printed at the end of a study.

The end-of-study table uses the contract's one rule for "best" and "improvement" (``study/contract.py``), the
same as the report and the notebooks, and ends with where to look: the exact ``mlflow ui``, optuna-dashboard
and ``python -m analysis.report`` commands for the study that just ran.
"""

from __future__ import annotations

import math
import shlex
import sys
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import contract as c
from .config import StudyConfig
from .secrets import mask_url
from .tracking import is_local_store


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe_point(t: FrozenTrial) -> str:
    rec = c.trial_record(t)
    k = rec.get(c.PARAM_K)
    if k is None:
        return ""
    return c.describe_config(c.config_key(rec)).replace(", ", " ")


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete trial with the lowest value at the study's own NFE and the search's fidelity (live line)."""
    nfe = study.user_attrs.get(c.STUDY_NFE)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and c.nfe_of(t.user_attrs, nfe) == nfe and c.fidelity_of(t.user_attrs) == c.SCREEN]
    return min(done, key=lambda t: t.value) if done else None


class ProgressReporter:
    """A rich progress bar on a terminal, one plain line per finished trial elsewhere (logs, tests). Counts only
    this command's trials."""

    def __init__(self, n_trials: int, study: optuna.Study, live: bool | None = None, stream=None):
        self.n = n_trials
        self.study = study
        self.mine: dict[int, str] = {}  # trial number -> final state, of this command's trials
        self.started = time.monotonic()
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.loop = None
        self._progress = None
        self._task = None
        self._step_task = None
        self.objective = study.user_attrs.get(c.OBJECTIVE, "fid").upper()

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

    def extend(self, n: int) -> None:
        """``n`` more trials (the confirmation) belong to this command."""
        self.n += n
        if self._progress is not None:
            self._progress.update(self._task, total=self.n)

    @property
    def done(self) -> int:
        return len(self.mine)

    def count(self, state: str) -> int:
        return sum(1 for s in self.mine.values() if s == state)

    @property
    def interrupted(self) -> list[int]:
        return sorted(n for n, s in self.mine.items() if s == "FAIL")

    def _best_text(self) -> str:
        best = best_trial(self.study)
        return f"best {self.objective} {best.value:.4g} (#{best.number})" if best is not None else f"best {self.objective} -"

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
        """Called once per finished trial of this command (by the loop, or by the worker supervisor)."""
        if trial.number in self.mine:
            return
        self.mine[trial.number] = trial.state.name
        if self._progress is not None:
            self._progress.update(self._task, completed=min(self.done, self.n), info=self._best_text())
            self._progress.update(self._step_task, visible=False)
            if trial.state != TrialState.COMPLETE:
                self._progress.console.print(f"trial #{trial.number} {trial.state.name}: "
                                             f"{trial.user_attrs.get(c.FAIL_REASON, '')}")
            return
        if trial.state == TrialState.COMPLETE:
            result = f"{self.objective} {trial.value:.4g}"
            if self.objective != "FID" and trial.user_attrs.get(c.FID) is not None:
                result += f" (FID {trial.user_attrs[c.FID]:.2f})"
        else:
            result = f"{trial.state.name}: {trial.user_attrs.get(c.FAIL_REASON, '')}"
        role = trial.user_attrs.get(c.ROLE, c.ROLE_SEARCH)
        fid = c.fidelity_of(trial.user_attrs)
        elapsed = time.monotonic() - self.started
        print(
            f"[trial {self.done}/{self.n}] #{trial.number} {role}{'' if fid == c.SCREEN else f' ({fid})'} "
            f"{describe_point(trial)}  {result}  | {self._best_text()}  | {_fmt_time(elapsed)} elapsed, "
            f"ETA {_fmt_time(self.eta())}",
            file=self.stream, flush=True,
        )


# -- where to look -------------------------------------------------------------------------------------------
def commands(config: StudyConfig) -> dict[str, str]:
    """The exact commands that open this study's stores and write its report."""
    q = shlex.quote
    storage = mask_url(config.storage_url)
    if is_local_store(config.mlflow_uri):
        mlflow = (f"mlflow ui --backend-store-uri {q(config.mlflow_uri)} "
                  f"--default-artifact-root {q(str(config.artifact_root))}")
    else:
        mlflow = f"open {mask_url(config.mlflow_uri)} in a browser (an MLflow tracking server)"
    dashboard_storage = storage[len("journal:"):] if storage.startswith("journal:") else storage
    return dict(
        mlflow=mlflow,
        dashboard=f"optuna-dashboard {q(dashboard_storage)}",
        report=(f"python -m analysis.report --study {q(config.study_name)} --storage {q(storage)} "
                f"--tracking-uri {q(mask_url(config.mlflow_uri))} --out {q(str(config.runs_dir / 'report'))}"),
    )


def study_summary(study: optuna.Study, config: StudyConfig, mine: dict[int, str], wall_s: float) -> dict:
    """The numbers of the final table as a dict (also stored as the parent run's summary.json)."""
    trials = study.get_trials(deepcopy=False)
    records = [c.trial_record(t) for t in trials]
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    fidelity = c.headline_fidelity(records)
    head = c.headline(records, nfe=config.nfe, fidelity=fidelity, default_nfe=config.nfe)
    out = dict(
        study=config.study_name, trials=len(trials), states=by_state, wall_time_s=wall_s,
        this_command={s.lower(): sum(1 for v in mine.values() if v == s) for s in ("COMPLETE", "PRUNED", "FAIL")},
        objective=config.objective, fid_samples=config.preset.fid_samples, fid_reference=config.preset.fid_reference,
        settings=config.settings(fidelity if fidelity in config.shared else None), paths=config.paths,
        headline=head.as_dict(), optuna_storage=mask_url(config.storage_url), mlflow_uri=mask_url(config.mlflow_uri),
        mlflow_experiment_id=study.user_attrs.get(c.STUDY_MLFLOW_EXPERIMENT_ID),
        mlflow_parent_run_id=study.user_attrs.get(c.STUDY_MLFLOW_PARENT_RUN_ID),
        teacher_key=study.user_attrs.get(c.STUDY_TEACHER_KEY), commands=commands(config),
    )
    if fidelity == c.FULL and config.length != c.FULL:
        out["screen_headline"] = c.headline(records, nfe=config.nfe, fidelity=config.length,
                                            default_nfe=config.nfe).as_dict()
        out["screen_settings"] = config.settings(config.length)
    return out


def _group_text(g: dict | None) -> str:
    if not g:
        return "- (no complete trial yet)"
    sd = g["sd"]
    spread = f" ± {sd:.3f}" if isinstance(sd, float) and math.isfinite(sd) else ""
    return f"FID {g['mean']:.3f}{spread} (n = {g['n']} seed{'s' if g['n'] != 1 else ''}; trials {_trials(g['trials'])})"


def _trials(numbers: list[int]) -> str:
    numbers = sorted(numbers)
    return ", ".join(f"#{n}" for n in numbers[:6]) + (f" and {len(numbers) - 6} more" if len(numbers) > 6 else "")


def print_summary(summary: dict, config: StudyConfig, stream=None) -> None:
    from rich.console import Console
    from rich.table import Table

    stream = stream or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 140)
    table = Table(title=f"study {summary['study']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    s, mine = summary["states"], summary["this_command"]
    table.add_row("trials", f"{summary['trials']} in the study ({s['complete']} complete, {s['pruned']} pruned, "
                            f"{s['fail']} failed, {s['running']} running, {s['waiting']} queued); this command: "
                            f"{mine['complete']} complete, {mine['pruned']} pruned, {mine['fail']} failed in "
                            f"{_fmt_time(summary['wall_time_s'])}")
    for label, key in (("training", "settings"), ("screen training", "screen_settings")):
        if summary.get(key):
            table.add_row(label, ", ".join(f"{k} {v}" for k, v in summary[key].items())
                          + f", teacher paths: {summary['paths']}")
    table.add_row("scores", f"FID and KID on {summary['fid_samples']:,} samples against {summary['fid_reference']:,} "
                            f"reference images; the trials minimise {summary['objective'].upper()}"
                  + ("" if summary["objective"] == "fid" else
                     " (with few samples FID is strongly biased; KID is not: compare FIDs only at equal counts)"))
    for label, key in (("headline", "headline"), ("screen", "screen_headline")):
        head = summary.get(key)
        if not head:
            continue
        where = f"NFE {head['nfe']}, {head['fidelity']} length"
        table.add_row(f"{label}: baseline K=1", f"{_group_text(head['baseline'])}  [{where}]")
        best = head["best"]
        table.add_row(f"{label}: best B-DENSE", (f"{best['config']}: " if best else "") + _group_text(best)
                      + (f", chosen among {head['candidates']} configurations" if best else ""))
        table.add_row(f"{label}: verdict", head["verdict"] or "- (needs a complete K=1 and a K>1 configuration)")
    table.add_row("teacher", str(summary["teacher_key"]))
    table.add_row("Optuna storage", summary["optuna_storage"])
    table.add_row("MLflow", f"{summary['mlflow_uri']} (experiment {summary['mlflow_experiment_id']}, "
                            f"parent run {summary['mlflow_parent_run_id']})")
    cmds = summary["commands"]
    table.add_row("look: MLflow", cmds["mlflow"])
    table.add_row("look: dashboard", cmds["dashboard"])
    table.add_row("look: report", cmds["report"])
    console.print(table)
