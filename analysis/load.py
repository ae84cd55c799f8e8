"""Read a study into pandas: one row per trial, optionally joined with the trial's MLflow run.

The storage contract (what ``study/`` writes) is described in ``../shared/DESIGN.md`` and issue 3:
trial params ``K``, ``a``, ``b`` (exponential weights) or ``w1..wK`` (free weights); the objective value is
the mean FID over seeds; the trial's user attributes hold ``fid``, ``kid``, ``fid_seeds``, ``fid_std``,
``seeds``, ``nfe``, ``framework``, ``weights_mode``, ``fitted_a``, ``fitted_b``, ``preset``, ``teacher_key``,
``mlflow_run_id``, ``wall_time_s``, ``role`` and ``fail_reason``; the study's user attributes hold
``preset``, ``framework``, ``nfe``, ``fid_samples``, ``teacher_key``, ``mlflow_experiment_id``,
``mlflow_parent_run_id``, ``k_choices`` and ``weights_mode``.

Every problem with the input is a :class:`StudyLoadError` whose message is one line meant for a person.
Nothing here plots, and nothing here writes to either store.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import optuna
import pandas as pd

RUNS_DIR_ENV = "BDENSE_RUNS_DIR"  # study/run.py's run folder (default ./runs)


def default_storage() -> str:
    """study/run.py's default Optuna storage: the journal file ``$BDENSE_RUNS_DIR/optuna-journal.log``."""
    return f"{os.environ.get(RUNS_DIR_ENV) or 'runs'}/optuna-journal.log"


def default_tracking_uri() -> str:
    """study/run.py's default MLflow store: ``sqlite:///$BDENSE_RUNS_DIR/mlflow.db``."""
    return f"sqlite:///{os.environ.get(RUNS_DIR_ENV) or 'runs'}/mlflow.db"


DEFAULT_STORAGE = default_storage()
DEFAULT_TRACKING_URI = default_tracking_uri()

# Columns that come first in the trials frame, in this order; other params and user attributes follow.
BASE_COLUMNS = [
    "number", "state", "value", "K", "a", "b", "a_eff", "b_eff", "role", "framework", "nfe", "weights_mode",
    "fid", "fid_std", "kid", "fid_seeds", "seeds", "n_seeds", "fitted_a", "fitted_b", "preset", "teacher_key",
    "mlflow_run_id", "wall_time_s", "duration_s", "datetime_start", "datetime_complete", "fail_reason",
]
LIST_COLUMNS = ("fid_seeds", "seeds")
_KNOWN_ATTRS = {
    "fid", "kid", "fid_seeds", "fid_std", "seeds", "nfe", "framework", "weights_mode", "fitted_a", "fitted_b",
    "preset", "teacher_key", "mlflow_run_id", "wall_time_s", "role", "fail_reason",
}
_W_PARAM = re.compile(r"^w(\d+)$")


class StudyLoadError(ValueError):
    """The storage, study or tracking store cannot be read as asked; the message is one line."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    msg = _one_line(exc, 200)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# --------------------------------------------------------------------------------------------- storages
def _sqlite_file(url: str) -> str | None:
    """The file behind a ``sqlite:///path`` URL (None for in-memory databases)."""
    rest = url.split("://", 1)[1]
    if rest.startswith("/"):
        rest = rest[1:]
    rest = rest.split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return rest


def _check_optuna_sqlite(url: str, path: str) -> None:
    """An SQLite file that holds no Optuna tables (e.g. the MLflow store) is named as such."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StudyLoadError(f"storage {url} is not a readable SQLite database: {_describe(exc)}") from None
    if not {"studies", "trials"} <= tables:
        what = " (it looks like an MLflow tracking store)" if "experiments" in tables else ""
        raise StudyLoadError(f"storage {url} holds no Optuna tables{what}")


def storage_label(storage: Any) -> str:
    if storage is None:
        return default_storage()
    return str(storage) if isinstance(storage, (str, os.PathLike)) else type(storage).__name__


def open_storage(storage: str | os.PathLike | optuna.storages.BaseStorage | None = None) -> optuna.storages.BaseStorage:
    """Open an Optuna storage for reading, with study/'s one opener (``study.storage.open_storage``, read only).

    ``storage`` is what study/run.py's ``--storage`` takes: ``journal:PATH`` or ``journal:///abs/path`` (the
    journal file), an RDB URL (``sqlite:///runs/optuna.db``, ``postgresql://...``), ``redis://...`` (journal
    on Redis), or a plain path: a journal file (``runs/optuna-journal.log``) or an SQLite file, told apart by
    its first bytes. Also an already open storage, or None for :func:`default_storage`. A missing file is an
    error, never a new empty storage; nothing is written.
    """
    from study.storage import StorageError
    from study.storage import open_storage as open_url

    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    text = str(storage) if storage is not None else default_storage()
    if "://" not in text and not text.startswith("journal:"):
        text = _url_of_path(text)
    if text.startswith("sqlite"):
        path = _sqlite_file(text)
        if path is not None and not Path(path).is_file():
            raise StudyLoadError(f"storage not found: {text} (no file {path})")
        if path is not None:
            _check_optuna_sqlite(text, path)
    try:
        return open_url(text, create=False)
    except StorageError as exc:
        raise StudyLoadError(str(exc)) from None


def _url_of_path(text: str) -> str:
    """A plain path as a storage URL: SQLite or journal file, told apart by its first bytes."""
    path = Path(text).expanduser()
    if not path.exists():
        raise StudyLoadError(f"storage not found: {text} (give a journal file such as {default_storage()} "
                             f"or an RDB URL such as sqlite:///runs/optuna.db)")
    if path.is_dir():
        raise StudyLoadError(f"storage {text} is a folder; give the journal file (e.g. {default_storage()}) "
                             f"or an RDB URL")
    try:
        with path.open("rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise StudyLoadError(f"storage {text} is unreadable: {_describe(exc)}") from None
    if header.startswith(b"SQLite format 3"):
        return f"sqlite:///{path.resolve()}"
    try:
        with path.open("rb") as fh:
            first = fh.readline().strip()
        if first and "op_code" not in json.loads(first):
            raise ValueError("no op_code")
    except (ValueError, TypeError, AttributeError):  # JSON errors are ValueErrors
        raise StudyLoadError(f"storage {text} is not a readable Optuna journal file (nor an SQLite database)") from None
    return f"journal:{path}"


def study_names(storage: str | os.PathLike | optuna.storages.BaseStorage | None = None) -> list[str]:
    st = open_storage(storage)
    try:
        return sorted(optuna.get_all_study_names(storage=st))
    except Exception as exc:
        raise StudyLoadError(f"cannot read studies from {storage_label(storage)}: {_describe(exc)}") from None


def load_study(storage: str | os.PathLike | optuna.storages.BaseStorage | None, study_name: str | None) -> optuna.Study:
    """The study ``study_name`` in ``storage``; a missing name lists the names that exist.

    ``study_name`` None (or "") picks the storage's only study, and is an error when it holds several.
    """
    st = open_storage(storage)
    label = storage_label(storage)
    try:
        names = sorted(optuna.get_all_study_names(storage=st))
    except Exception as exc:
        raise StudyLoadError(f"cannot read studies from {label}: {_describe(exc)}") from None
    if not study_name:
        if len(names) == 1:
            study_name = names[0]
        elif not names:
            raise StudyLoadError(f"{label} holds no studies")
        else:
            shown = ", ".join(repr(n) for n in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise StudyLoadError(f"{label} holds {len(names)} studies; name one: {shown}")
    if study_name not in names:
        if not names:
            raise StudyLoadError(f"no study named {study_name!r} in {label}: the storage holds no studies")
        shown = ", ".join(repr(n) for n in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise StudyLoadError(f"no study named {study_name!r} in {label}; studies there: {shown}")
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except Exception as exc:
        raise StudyLoadError(f"cannot load study {study_name!r} from {label}: {_describe(exc)}") from None


def study_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's user attributes plus ``study_name``."""
    attrs = dict(study.user_attrs)
    attrs["study_name"] = study.study_name
    return attrs


# --------------------------------------------------------------------------------------------- trials
def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _float(x: Any) -> float:
    return float(x) if _finite(x) else float("nan")


def _float_list(x: Any) -> list[float] | None:
    if x is None:
        return None
    if isinstance(x, (int, float)):
        x = [x]
    try:
        return [float(v) if v is not None else float("nan") for v in x]
    except (TypeError, ValueError):
        return None


def _fit_ln_weights(ws: Sequence[float]) -> tuple[float, float]:
    """(a, b) of free weights by :func:`bdense_core.schedule.fit_exponential` (NaNs for unusable weights).

    Only trials that lack the ``fitted_a``/``fitted_b`` the study records need it, so bdense_core (and torch)
    is imported here, not when analysis/ loads.
    """
    from bdense_core.schedule import fit_exponential

    try:
        return fit_exponential(ws)
    except ValueError:
        return float("nan"), float("nan")


def _trial_row(t: optuna.trial.FrozenTrial, sattrs: dict[str, Any]) -> dict[str, Any]:
    p, u = t.params, t.user_attrs
    if not p and t.state == optuna.trial.TrialState.WAITING:  # enqueued: params wait in a system attribute
        p = dict(t.system_attrs.get("fixed_params") or {})
    row: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name,
        "value": _float(t.value) if t.values is not None and len(t.values) == 1 else float("nan"),
    }
    k = p.get("K", u.get("K"))
    if k is None:
        ks = sattrs.get("k_choices")
        if isinstance(ks, (list, tuple)) and len(ks) == 1:
            k = ks[0]
    row["K"] = int(k) if _finite(k) else None
    row["a"] = _float(p.get("a"))
    row["b"] = _float(p.get("b"))
    ws = {int(m.group(1)): float(v) for name, v in p.items() if (m := _W_PARAM.match(name))}
    for i in sorted(ws):
        row[f"w{i}"] = ws[i]
    row["weights_mode"] = u.get("weights_mode") or ("free" if ws else sattrs.get("weights_mode") or "exp")
    row["fitted_a"] = _float(u.get("fitted_a"))
    row["fitted_b"] = _float(u.get("fitted_b"))
    # The (a, b) a trial effectively used: its own params for exponential weights, else the fitted pair.
    if row["weights_mode"] != "free" and _finite(row["a"]) and _finite(row["b"]):
        a_eff, b_eff = row["a"], row["b"]
    elif _finite(row["fitted_a"]) and _finite(row["fitted_b"]):
        a_eff, b_eff = row["fitted_a"], row["fitted_b"]
    elif ws and sorted(ws) == list(range(1, len(ws) + 1)):
        a_eff, b_eff = _fit_ln_weights([ws[i] for i in sorted(ws)])
    else:
        a_eff, b_eff = row["a"], row["b"]
    row["a_eff"], row["b_eff"] = a_eff, b_eff
    row["role"] = u.get("role") or "search"
    row["framework"] = u.get("framework") or sattrs.get("framework")
    nfe = u.get("nfe", sattrs.get("nfe"))
    row["nfe"] = int(nfe) if _finite(nfe) else None
    row["fid"] = _float(u.get("fid", t.value if t.values is not None and len(t.values) == 1 else None))
    row["fid_std"] = _float(u.get("fid_std"))
    row["kid"] = _float(u.get("kid"))
    fid_seeds = _float_list(u.get("fid_seeds"))
    row["fid_seeds"] = fid_seeds
    row["seeds"] = u.get("seeds") if isinstance(u.get("seeds"), list) else (
        [u["seeds"]] if u.get("seeds") is not None else None)
    if fid_seeds:
        row["n_seeds"] = sum(1 for v in fid_seeds if math.isfinite(v))
    else:
        row["n_seeds"] = 1 if _finite(row["value"]) else 0
    row["preset"] = u.get("preset") or sattrs.get("preset")
    row["teacher_key"] = u.get("teacher_key") or sattrs.get("teacher_key")
    row["mlflow_run_id"] = u.get("mlflow_run_id")
    row["wall_time_s"] = _float(u.get("wall_time_s"))
    row["datetime_start"] = pd.Timestamp(t.datetime_start) if t.datetime_start else pd.NaT
    row["datetime_complete"] = pd.Timestamp(t.datetime_complete) if t.datetime_complete else pd.NaT
    if t.datetime_start and t.datetime_complete:
        row["duration_s"] = (t.datetime_complete - t.datetime_start).total_seconds()
    else:
        row["duration_s"] = float("nan")
    row["fail_reason"] = u.get("fail_reason")
    for name, v in p.items():
        if name not in ("K", "a", "b") and not _W_PARAM.match(name):
            row[name if name not in row else f"param_{name}"] = v
    for name, v in u.items():
        if name not in _KNOWN_ATTRS and name != "K":
            row[name if name not in row else f"attr_{name}"] = v
    return row


def _state_counts(trials: Iterable[optuna.trial.FrozenTrial]) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def trials_frame(study: optuna.Study, require_complete: bool = True) -> pd.DataFrame:
    """One row per trial of ``study`` (see :data:`BASE_COLUMNS`).

    With ``require_complete`` (the default) an empty study or one without a single completed trial is a
    :class:`StudyLoadError`; the message gives the states and the first recorded failure reason.
    """
    try:
        trials = study.get_trials(deepcopy=False)
    except Exception as exc:
        raise StudyLoadError(f"cannot read the trials of study {study.study_name!r}: {_describe(exc)}") from None
    name = study.study_name
    if not trials:
        raise StudyLoadError(f"study {name!r} has no trials yet; run study/run.py --study-name {name} first")
    if require_complete and not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        reasons = [str(t.user_attrs["fail_reason"]) for t in trials if t.user_attrs.get("fail_reason")]
        why = f"; first failure reason: {_one_line(reasons[0], 150)}" if reasons else ""
        raise StudyLoadError(f"study {name!r} has no completed trials ({_state_counts(trials)}){why}")
    sattrs = study_attrs(study)
    rows = [_trial_row(t, sattrs) for t in trials]
    df = pd.DataFrame(rows)
    w_cols = sorted((c for c in df.columns if _W_PARAM.match(c)), key=lambda c: int(c[1:]))
    ordered = [c for c in BASE_COLUMNS if c in df.columns]
    ordered[ordered.index("b") + 1:ordered.index("b") + 1] = w_cols
    rest = [c for c in df.columns if c not in ordered]
    df = df[ordered + rest]
    df["K"] = df["K"].astype("Int64")
    df["nfe"] = df["nfe"].astype("Int64")
    df["n_seeds"] = df["n_seeds"].astype(int)
    df = df.sort_values("number", kind="stable").reset_index(drop=True)
    df.attrs["study"] = sattrs
    return df


def load_trials(storage: str | os.PathLike | optuna.storages.BaseStorage | None, study_name: str | None,
                with_mlflow: bool = False, tracking_uri: str | None = None,
                require_complete: bool = True) -> pd.DataFrame:
    """Load study ``study_name`` from ``storage`` as a DataFrame, one row per trial.

    Columns: ``number``, ``state``, ``value`` (mean FID over seeds), the params (``K``, ``a``, ``b`` or
    ``w1..wK``), ``a_eff``/``b_eff`` (the (a, b) the trial used: its params, or the fitted pair for free
    weights), the user attributes of the contract (lists kept as lists), ``n_seeds``, ``duration_s``,
    ``datetime_start``/``datetime_complete`` and ``mlflow_run_id``. The study's user attributes are in
    ``df.attrs["study"]``. With ``with_mlflow`` each trial's MLflow run adds ``mlflow_<metric>`` columns
    (the metric's last value) and ``mlflow_status``; ``tracking_uri`` defaults to the study's ``mlflow_uri``
    attribute, else :func:`default_tracking_uri`.

    Raises :class:`StudyLoadError` (one-line message) when the storage is missing or unreadable, the study
    name does not exist (the message lists the names that do), the study is empty, or no trial completed.
    """
    study = load_study(storage, study_name)
    df = trials_frame(study, require_complete=require_complete)
    if with_mlflow:
        df = join_mlflow(df, tracking_uri or df.attrs["study"].get("mlflow_uri"))
    return df


# --------------------------------------------------------------------------------------------- MLflow
def tracking_store_exists(tracking_uri: str | None) -> bool:
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite"):
        path = _sqlite_file(uri)
        return path is None or Path(path).is_file()
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path)).exists()
    if "://" not in uri:
        return Path(uri).exists()
    return True  # servers (http, databricks, postgresql): only trying tells


def mlflow_client(tracking_uri: str | None = None):
    """An ``MlflowClient`` on an existing tracking store (a missing local store is an error, not created)."""
    uri = tracking_uri or default_tracking_uri()
    if not tracking_store_exists(uri):
        raise StudyLoadError(f"MLflow tracking store not found: {uri}")
    try:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise StudyLoadError(f"cannot open MLflow tracking store {uri}: {_describe(exc)}") from None


def _get_run(client, run_id: str):
    try:
        return client.get_run(run_id)
    except Exception:
        return None


def join_mlflow(df: pd.DataFrame, tracking_uri: str | None = None) -> pd.DataFrame:
    """``df`` with each trial's MLflow run's last metric values as ``mlflow_<key>`` columns."""
    client = mlflow_client(tracking_uri)
    extra: dict[int, dict[str, Any]] = {}
    missing = []
    for idx, run_id in df["mlflow_run_id"].items():
        if not isinstance(run_id, str) or not run_id:
            continue
        run = _get_run(client, run_id)
        if run is None:
            missing.append(run_id)
            continue
        cols = {f"mlflow_{k}": float(v) for k, v in run.data.metrics.items()}
        cols["mlflow_status"] = run.info.status
        extra[idx] = cols
    if missing:
        warnings.warn(f"{len(missing)} MLflow run(s) not found in {tracking_uri or default_tracking_uri()}: "
                      f"{', '.join(missing[:5])}", stacklevel=2)
    out = df.copy()
    if extra:
        add = pd.DataFrame.from_dict(extra, orient="index")
        add = add[sorted(add.columns, key=_natural_key)]
        out = out.join(add)
    return out


def _natural_key(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


HISTORY_COLUMNS = ["run_id", "trial_number", "key", "step", "value", "timestamp"]


def load_metric_histories(tracking_uri: str | None, run_ids: Iterable[str],
                          keys: Sequence[str] | None = ("loss", "loss_branch_*", "endpoint_l1")) -> pd.DataFrame:
    """Per-step metric histories of MLflow runs as a long DataFrame.

    Columns: ``run_id``, ``trial_number`` (the run's ``optuna_trial_number`` tag, or NA), ``key``, ``step``,
    ``value``, ``timestamp``. ``keys`` are metric names or fnmatch patterns (``loss_branch_*``) matched
    against each run's metrics; None means every metric of the run. Runs that do not exist are skipped with
    a warning; an empty frame (same columns) means nothing matched.
    """
    client = mlflow_client(tracking_uri)
    records: list[dict[str, Any]] = []
    missing = []
    for run_id in dict.fromkeys(r for r in run_ids if isinstance(r, str) and r):
        run = _get_run(client, run_id)
        if run is None:
            missing.append(run_id)
            continue
        have = sorted(run.data.metrics, key=_natural_key)
        if keys is None:
            wanted = have
        else:
            wanted = [k for k in have if any(fnmatch.fnmatchcase(k, pat) for pat in keys)]
        tag = run.data.tags.get("optuna_trial_number")
        trial_number = int(tag) if tag is not None and str(tag).lstrip("-").isdigit() else None
        for key in wanted:
            for m in client.get_metric_history(run_id, key):
                records.append({"run_id": run_id, "trial_number": trial_number, "key": key,
                                "step": int(m.step), "value": float(m.value), "timestamp": int(m.timestamp)})
    if missing:
        warnings.warn(f"{len(missing)} MLflow run(s) not found: {', '.join(missing[:5])}", stacklevel=2)
    order = {r: i for i, r in enumerate(dict.fromkeys(rec["run_id"] for rec in records))}
    records.sort(key=lambda r: (order[r["run_id"]], _natural_key(r["key"]), r["step"]))
    out = pd.DataFrame.from_records(records, columns=HISTORY_COLUMNS)
    out["trial_number"] = out["trial_number"].astype("Int64")
    return out
