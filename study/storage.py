"""Optuna storages from a URL, with heartbeats so that a trial whose process died is failed and retried.

URLs: ``journal:PATH`` (or ``journal:///abs/path``, or a bare path ending in ``.log``/``.journal``) is
Optuna's journal file storage, safe for several processes on one machine (or an NFS share);
``sqlite:///``, ``postgresql://``, ``mysql://`` are Optuna's RDB storage (PostgreSQL is the scale-out
across machines); ``redis://`` uses the journal's Redis backend (needs the ``redis`` package).

Optuna 5's RDB storage has heartbeats built in. Its journal storage does not, so
:class:`HeartbeatJournalStorage` adds them: the running trial's process writes the time into a trial system
attribute every ``heartbeat_interval`` seconds, and a RUNNING trial whose last beat is older than the grace
period is stale. Optuna's optimize loop then fails stale trials before each new trial and calls the stale
trial callback, :func:`retry_stale_trial`, which queues the same parameters again. Heartbeats compare
wall clocks, so machines sharing a journal file need synchronised clocks (NTP).
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from .contract import PLAN_ATTRS

HEARTBEAT_ATTR = "bdense:heartbeat"
GRACE_FACTOR = 4  # a trial is stale after GRACE_FACTOR heartbeat intervals without a beat
MAX_RETRY = 3
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


class StorageError(ValueError):
    """The storage URL is unsupported or cannot be opened (a usage error: exit status 2)."""


def retry_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed-as-stale trial's parameters again (at most ``MAX_RETRY`` times per original trial).

    Like Optuna's ``RetryHeartbeatStaleTrialCallback``, but the new trial keeps only the ``role`` of the old
    one (not its MLflow run id or results) and notes ``retry_of`` (the original trial number).
    """
    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > MAX_RETRY:
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={**{k: trial.user_attrs[k] for k in PLAN_ATTRS if k in trial.user_attrs}, "retry_of": history[0]},
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )


STALE_REASON = "its process stopped sending heartbeats (killed or crashed); the parameters were queued again"


def _mark_stale(storage: BaseStorage, trial_ids: list[int]) -> list[int]:
    """Write ``fail_reason`` on trials about to be failed as stale (they are still RUNNING here)."""
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON)
        except Exception:  # noqa: BLE001 - finished meanwhile
            pass
    return trial_ids


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's RDB storage; stale trials get a ``fail_reason`` before Optuna fails them."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return _mark_stale(self, super()._get_stale_trial_ids(study_id))


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage plus heartbeats (Optuna 5 has them only in the RDB storage)."""

    def __init__(self, backend, heartbeat_interval: int, grace_period: float | None = None,
                 stale_callback=retry_stale_trial):
        super().__init__(backend)
        self._heartbeat_interval = int(heartbeat_interval)
        self._grace_period = float(grace_period or GRACE_FACTOR * heartbeat_interval)
        self._stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except (UpdateFinishedTrialError, KeyError):
            pass  # the trial finished (or was failed as stale) meanwhile

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(HEARTBEAT_ATTR)
            if last is None and t.datetime_start is not None:
                last = t.datetime_start.timestamp()  # naive local time, as the journal replays it
            if last is not None and now - float(last) > self._grace_period:
                stale.append(t._trial_id)
        return _mark_stale(self, stale)

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._stale_callback

    @property
    def grace_period(self) -> float:
        return self._grace_period


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        rest = url[len("journal:"):]
        if rest.startswith("//"):
            rest = rest[2:]  # journal:///abs/path -> /abs/path
        return Path(rest).expanduser()
    if "://" not in url and url.endswith((".log", ".journal", ".jsonl")):
        return Path(url).expanduser()
    return None


def _check_journal_file(path: Path) -> None:
    if path.is_dir():
        raise StorageError(f"{path} is a folder, not a journal file")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"{path} is not readable and writable")
        with open(path, "rb") as f:
            first = f.readline()
        if first.strip():
            try:
                ok = "op_code" in json.loads(first)
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise StorageError(f"{path} exists but is not an Optuna journal file")
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {path.parent}: {e.strerror or e}") from None
        if not os.access(path.parent, os.W_OK):
            raise StorageError(f"cannot write to {path.parent}")


def open_storage(url: str, heartbeat_interval: int = 30) -> BaseStorage:
    """Open (and create if needed) the storage of ``url``; raises :class:`StorageError` with a short reason."""
    grace = GRACE_FACTOR * heartbeat_interval
    path = _journal_path(url)
    try:
        if path is not None:
            _check_journal_file(path)
            return HeartbeatJournalStorage(JournalFileBackend(str(path)), heartbeat_interval, grace)
        scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
        if scheme == "redis":
            from optuna.storages.journal import JournalRedisBackend

            return HeartbeatJournalStorage(JournalRedisBackend(url), heartbeat_interval, grace)
        if scheme in RDB_SCHEMES:
            if scheme == "sqlite":
                db = url.split(":///", 1)[1] if ":///" in url else ""
                if db and db != ":memory:" and not Path(db).expanduser().parent.is_dir():
                    raise StorageError(f"folder {Path(db).parent} does not exist")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat arguments are "experimental"
                kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if scheme == "sqlite" else {}
                return HeartbeatRDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace,
                                  heartbeat_stale_trial_callback=retry_stale_trial, **kwargs)
        raise StorageError("unsupported storage URL; use journal:PATH, sqlite:///PATH, postgresql://... or redis://...")
    except StorageError as e:
        raise StorageError(f"cannot open Optuna storage {url!r}: {e}") from None
    except ImportError as e:
        raise StorageError(f"cannot open Optuna storage {url!r}: missing package ({e.name})") from None
    except Exception as e:  # noqa: BLE001 - any driver error is a bad URL for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot open Optuna storage {url!r}: {reason}") from None


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the study's stale RUNNING trials now (recording ``fail_reason``) and queue their retries.

    Optuna does the same before each trial inside ``optimize``; this is for the edges: at start-up and after
    a worker process died. Returns the failed trial numbers.
    """
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return []
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            trial = storage.get_trial(trial_id)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                callback = storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(study, copy.deepcopy(storage.get_trial(trial_id)))
        except UpdateFinishedTrialError:
            pass  # another process failed it first
    return failed


def storage_location(url: str) -> str:
    """A human-readable place for the summary (the file path for journal storages)."""
    path = _journal_path(url)
    return str(path) if path is not None else url


# -- interim study-level API (the storage rework replaces these) ----------------------------------------------
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: int
    grace: float


def open_study_storage(url: str, study_name: str, heartbeat_interval: int):
    settings = HeartbeatSettings(heartbeat_interval, GRACE_FACTOR * heartbeat_interval)
    return open_storage(url, heartbeat_interval), settings


class HeartbeatKeeper:
    """Beats for the trials this process runs, from a background thread."""

    def __init__(self, storage, study, settings):
        self.storage, self.study, self.settings = storage, study, settings
        self.numbers: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._study_id = storage.get_study_id_from_name(study.study_name)

    def __contains__(self, number: int) -> bool:
        return number in self.numbers

    def add(self, numbers) -> None:
        with self._lock:
            self.numbers.update(numbers)
        self._beat(list(numbers))

    def discard(self, numbers) -> None:
        with self._lock:
            self.numbers.difference_update(numbers)

    def _beat(self, numbers) -> None:
        for n in numbers:
            try:
                tid = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, n)
                self.storage.record_heartbeat(tid)
            except Exception:  # noqa: BLE001
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval):
            with self._lock:
                numbers = list(self.numbers)
            self._beat(numbers)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def fail_stale(study) -> list[str]:
    numbers = set(fail_stale_trials(study))
    return [t.user_attrs["mlflow_run_id"] for t in study.get_trials(deepcopy=False)
            if t.number in numbers and t.user_attrs.get("mlflow_run_id")]


def fail_dead_owner(study, pid: int, reason: str) -> list[str]:
    run_ids = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker_pid") != pid:
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            study.tell(t.number, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001
            continue
        retry_stale_trial(study, study._storage.get_trial(t._trial_id))
        if t.user_attrs.get("mlflow_run_id"):
            run_ids.append(t.user_attrs["mlflow_run_id"])
    return run_ids
