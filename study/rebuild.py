"""Rebuild a lost study's Optuna storage from its published report, so that the campaign goes on in that study.

    python -m study.rebuild REPORT_DIR [--storage URL | --runs-dir DIR]

REPORT_DIR holds what ``analysis/report.py`` wrote: ``trials.csv`` (one row per trial, ``analysis.load.trials_frame``)
and ``summary.json`` (``study``: the name; ``study_attrs``: the study's user attributes). The storage is given as
``study/run.py --storage`` takes it (default: ``journal:<runs-dir>/optuna-journal.log``); it must not hold the study.

Recovered, through Optuna's public API: the study (name, direction, every user attribute, the metric name,
the default heartbeat settings) and every trial, in number order, with its state, value, params (with the
distributions ``study/space.py`` draws them from, so TPE and ``study/run.py`` resume on the study), user
attributes (typed back: numbers, bools, lists) and start/complete times. A trial still WAITING or RUNNING in the
report comes back FAIL (the driver queues again what it misses). The study gets the attribute ``rebuilt_from``.
Not recovered: the trials' MLflow runs (their ``mlflow_run_id`` names runs of the lost store), intermediate values
(a resumed search's pruner sees no curves of the old trials), system attributes (retry bookkeeping), empty-text
attributes (they come back absent), and whether a trial lacked an attribute the report fills from the study's
(``framework``, ``nfe``, ``preset``, ...: set on the trial, which changes nothing analysis/ computes).
Bad input (missing files, a study the storage already holds, a row Optuna refuses): one line, exit status 2, and
nothing written.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import optuna
from optuna.trial import FrozenTrial, TrialState

from study import contract as c
from study import space
from study.cli import _Parser
from study.config import JOURNAL_NAME, StudyConfig, UsageError, default_runs_dir

# trials.csv columns analysis.load derives (not user attributes), and user attributes that are always text
DERIVED = {"number", "state", "value", "a_eff", "b_eff", "n_seeds", "duration_s", "datetime_start", "datetime_complete"}
TEXT = {c.ROLE, c.FIDELITY, c.FRAMEWORK, c.WEIGHTS_MODE, c.PRESET, c.TEACHER_KEY, c.TEACHER_PATHS, c.OBJECTIVE,
        c.MLFLOW_RUN_ID, c.FAIL_REASON, c.HOSTNAME, c.DEVICE, c.ABLATION, c.ABLATION_CONFIG}
KEPT = ("COMPLETE", "PRUNED", "FAIL")


def _cell(text: str):
    """A CSV cell as ``analysis.report.write_trials_csv`` wrote it: JSON (numbers, lists), True/False, else text."""
    if text in ("True", "False"):
        return text == "True"
    for parse in (json.loads, float, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            pass
    return text


def _columns(rows: list[dict]) -> dict[str, list]:
    """Each column's cells typed (None: empty). A column with any text cell stays text; an integer column that
    pandas wrote as floats (it had empty cells) becomes integers again."""
    out = {}
    for name in rows[0]:
        raw = [r[name] for r in rows]
        vals = [_cell(v) if v != "" else None for v in raw]
        if name in TEXT or any(isinstance(v, str) for v in vals):
            vals = [v if v != "" else None for v in raw]
        elif None in vals and all(isinstance(v, float) and v.is_integer() for v in vals if v is not None):
            vals = [int(v) if v is not None else None for v in vals]
        out[name] = vals
    return out


def _distributions(params: dict, user_attrs: dict, compat: dict) -> dict:
    """The distributions study/space.py draws ``params`` from (it runs on a probe trial that records them)."""
    cfg = SimpleNamespace(k_choices=compat["k_choices"], weights_mode=compat["weights_mode"],
                          a_range=tuple(compat["a_range"]), b_range=tuple(compat["b_range"]),
                          w_range=tuple(compat["w_range"]))
    cfg.search_k_choices = StudyConfig.search_k_choices.fget(cfg)
    probe = FrozenTrial(number=0, trial_id=0, state=TrialState.WAITING, value=None, datetime_start=None,
                        datetime_complete=None, params=params, distributions={}, user_attrs=user_attrs,
                        system_attrs={}, intermediate_values={})
    space.suggest(probe, cfg)
    return probe.distributions


def read_report(folder: Path) -> tuple[str, dict, list[FrozenTrial]]:
    """(study name, study attributes, trials) of a report folder; UsageError for anything unusable."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with (folder / "trials.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        name, attrs = summary["study"], dict(summary["study_attrs"])
        compat = attrs["compat"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else e.strerror + f": {e.filename}"
        raise UsageError(f"{folder} is not a report of analysis/report.py with trials.csv and summary.json "
                         f"(study, study_attrs with compat) ({what}); give the report folder") from None
    attrs.pop("study_name", None)  # added by analysis.load.study_attrs, not a user attribute
    cols = _columns(rows) if rows else {}
    trials = []
    for i in range(len(rows)):
        row = {k: v[i] for k, v in cols.items()}
        try:
            if row["number"] != i:
                raise ValueError(f"trial numbers must run 0..{len(rows) - 1} in order, found {row['number']}")
            state = row["state"] if row["state"] in KEPT else "FAIL"
            user = {k.removeprefix("attr_"): v for k, v in row.items() if v is not None and k not in DERIVED}
            if state != row["state"]:
                user[c.FAIL_REASON] = f"rebuilt from a report that had it {row['state']}"
            if state != "COMPLETE" and c.FID in user and user[c.FID] == row["value"]:
                del user[c.FID]  # analysis.load shows the value as FID when there is no fid attribute
            params = {p: user.pop(p) for p in list(user) if p in (c.PARAM_A, c.PARAM_B) or re.fullmatch(r"w\d+", p)}
            if params or (user.get(c.PARAM_K) or 1) > 1:
                params[c.PARAM_K] = user.pop(c.PARAM_K)
            dists = _distributions(params, user, compat) if c.PARAM_K in params or c.PARAM_K in user else {}
            params = {p: params[p] for p in dists}
            start, end = (datetime.fromisoformat(row[k]) if row[k] else None
                          for k in ("datetime_start", "datetime_complete"))
            value = row["value"] if state != "FAIL" and row["value"] is not None else None
            t = optuna.trial.create_trial(state=TrialState[state], value=value, params=params, distributions=dists,
                                          user_attrs=user)
            t.datetime_start = start or end or t.datetime_start  # else create_trial's: now
            t.datetime_complete = end or start or t.datetime_complete
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"trials.csv row {i + 2} (trial {row.get('number')}) cannot be rebuilt: {e}; fix or "
                             f"remove the row") from None
        trials.append(t)
    return name, attrs, trials


def rebuild(folder: Path, url: str) -> optuna.Study:
    """Create the report's study in ``url`` (which must not hold it) with its attributes and trials."""
    from study.storage import HeartbeatSettings, journal_path, mask_url, open_storage, write_settings

    name, attrs, trials = read_report(folder)
    if journal_path(url) is not None:
        journal_path(url).parent.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        raise UsageError(f"study {name!r} already exists in {mask_url(url)}; rebuild into another --storage "
                         f"(or --runs-dir)") from None
    write_settings(storage, storage.get_study_id_from_name(name), HeartbeatSettings.make())
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    study.set_user_attr("rebuilt_from", f"{folder / 'trials.csv'} and summary.json, "
                                        f"{datetime.now():%Y-%m-%d %H:%M}: the trials' MLflow runs, intermediate "
                                        f"values and system attributes were not recovered")
    study.set_metric_names([str(attrs.get(c.OBJECTIVE, "fid")).upper()])
    study.add_trials(trials)
    return study


def main(argv: list[str] | None = None) -> int:
    from study.run import _err, _quiet
    from study.storage import StorageError, mask_url

    p = _Parser(prog="python -m study.rebuild", description="Rebuild a study's Optuna storage from its report folder.")
    p.add_argument("report", metavar="REPORT_DIR", help="folder with trials.csv and summary.json (analysis/report.py)")
    p.add_argument("--storage", default=None, metavar="URL", help="as study/run.py --storage takes it; default: "
                   f"journal:<runs-dir>/{JOURNAL_NAME}")
    p.add_argument("--runs-dir", default=None, metavar="DIR", help="run folder of the default storage (default: "
                   "$BDENSE_RUNS_DIR or ./runs)")
    args = p.parse_args(argv)
    runs_dir = Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_dir()
    url = args.storage or f"journal:{runs_dir.resolve() / JOURNAL_NAME}"  # study/run.py's default
    _quiet()
    try:
        study = rebuild(Path(args.report), url)
    except (UsageError, StorageError) as e:
        _err(str(e))
        return 2
    states = {s: sum(t.state.name == s for t in study.trials) for s in KEPT}
    print(f"rebuilt study {study.study_name!r} in {mask_url(url)}: {len(study.trials)} trials ("
          + ", ".join(f"{n} {s.lower()}" for s, n in states.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
