"""One staleness rule per study: heartbeats, stale trials and their retries, for a driver that uses ask/tell.

The heartbeat interval and grace period belong to the study: :func:`write_settings` stores them as a study
system attribute when the study is created (``study.storage.open_study_storage`` does it) and every process
reads them back from the study (:func:`read_settings`), whatever its own flags say. So all processes judge
staleness by the same grace period, and a live owner (one beat every ``interval`` seconds, ``grace`` at
least twice that) is never failed.

- :func:`record_heartbeats` beats, in a background thread, for the trials this process runs (several at
  once; trials are added and dropped as they start and end; a finished trial is no longer beaten for).
- :func:`fail_stale` fails the RUNNING trials whose owner has not beaten for longer than the study's grace:
  Optuna's ``optuna.storages.fail_stale_trials`` on an RDB storage (opened with the study's settings), the
  workaround of :mod:`study.journal_heartbeat` on a journal storage. Each failed trial is retried by
  :class:`RetryStaleTrial` (Optuna's ``RetryHeartbeatStaleTrialCallback``, at most :data:`MAX_RETRY` times,
  same parameters, only the user attributes that define the work, plus ``retry_of``). It closes nothing in
  MLflow: it returns the failed trials with their ``mlflow_run_id`` for the driver to close.
- :func:`is_finished` tells the owner of a trial whether another process failed it meanwhile, so that it
  ends that trial cleanly (``study.tell(..., skip_if_finished=True)``) and goes on.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from . import journal_heartbeat
from .contract import PLAN_ATTRS

SETTINGS_ATTR = "bdense:heartbeat_settings"  # study system attribute: {"interval": s, "grace": s}
DEFAULT_INTERVAL = 30
GRACE_FACTOR = 4  # default grace: GRACE_FACTOR heartbeat intervals
MIN_GRACE_FACTOR = 2  # a grace shorter than 2 intervals could fail a live owner
MAX_RETRY = 3
# user attributes a retry keeps: those that say what to run (role; an ablation's own NFE, seeds and labels)
# (the study contract's PLAN_ATTRS: role, K, seeds, NFE, fidelity, ablation labels, confirmation bookkeeping)
RETRY_KEEPS = PLAN_ATTRS
STALE_REASON = "its process stopped sending heartbeats (killed or crashed)"

Say = Callable[[str], None]

# Optuna warns on every ask() of an RDB storage with heartbeats, since only optimize() beats by itself; with
# record_heartbeats the driver beats for its asked trials, which is the case this module exists for
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize",
                        category=UserWarning)


def _say_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class HeartbeatSettings:
    """A study's staleness rule: a beat every ``interval`` seconds; stale after ``grace`` seconds without."""

    interval: int
    grace: int

    @classmethod
    def make(cls, interval: int | None = None, grace: int | None = None) -> HeartbeatSettings:
        """Settings from flags (None: the defaults, 30 s and 4 intervals); ValueError with one line if bad."""
        interval = DEFAULT_INTERVAL if interval is None else interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"heartbeat interval must be a whole number of seconds >= 1, got {interval!r}")
        grace = GRACE_FACTOR * interval if grace is None else grace
        if isinstance(grace, bool) or not isinstance(grace, int) or grace < MIN_GRACE_FACTOR * interval:
            raise ValueError(f"grace period must be a whole number of seconds >= {MIN_GRACE_FACTOR} heartbeat "
                             f"intervals ({MIN_GRACE_FACTOR * interval} s), got {grace!r}")
        return cls(int(interval), int(grace))

    def describe(self) -> str:
        return f"a heartbeat every {self.interval} s, stale after {self.grace} s without one"


def read_settings(storage: BaseStorage, study_id: int) -> HeartbeatSettings | None:
    """The study's settings as stored with it; None for a study created without them."""
    value = storage.get_study_system_attrs(study_id).get(SETTINGS_ATTR)
    if not isinstance(value, dict):
        return None
    try:
        return HeartbeatSettings.make(int(value["interval"]), int(value["grace"]))
    except (KeyError, TypeError, ValueError):
        return None


def write_settings(storage: BaseStorage, study_id: int, settings: HeartbeatSettings) -> None:
    storage.set_study_system_attr(study_id, SETTINGS_ATTR, {"interval": settings.interval, "grace": settings.grace})


def _study_id(storage: BaseStorage, study: optuna.Study) -> int:
    return storage.get_study_id_from_name(study.study_name)


def _trial_id(storage: BaseStorage, study_id: int, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def study_settings(storage: BaseStorage, study: optuna.Study) -> HeartbeatSettings:
    """The study's settings; ValueError (one line) if it has none (it was not opened by open_study_storage)."""
    settings = read_settings(storage, _study_id(storage, study))
    if settings is None:
        raise ValueError(f"study {study.study_name!r} has no heartbeat settings; open it with "
                         f"study.storage.open_study_storage")
    return settings


class RetryStaleTrial:
    """The stale-trial callback: Optuna's ``RetryHeartbeatStaleTrialCallback(max_retry)`` on a copy of the
    failed trial that keeps its parameters, its distributions, the user attributes named in ``keep`` and
    Optuna's retry bookkeeping (system attributes ``failed_trial`` and ``retry_history``), and adds the user
    attribute ``retry_of`` (the number of the first trial of the series). The journal's heartbeat attribute
    is not copied (the retry must not look stale before it starts). It also remembers the trials it saw, for
    :func:`fail_stale` to return."""

    def __init__(self, max_retry: int = MAX_RETRY, keep: Iterable[str] = RETRY_KEEPS) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.max_retry = max_retry
        self.keep = tuple(keep)
        self._seen: list[FrozenTrial] = []
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            self._seen.append(trial)
        first = trial.system_attrs.get("failed_trial", trial.number)
        template = copy.deepcopy(trial)
        template.user_attrs = {**{k: trial.user_attrs[k] for k in self.keep if k in trial.user_attrs},
                               "retry_of": first}
        template.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != journal_heartbeat.BEAT_ATTR}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self._retry(study, template)

    def take(self) -> list[FrozenTrial]:
        """The failed trials seen since the last call."""
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


@dataclass(frozen=True)
class StaleTrial:
    """A trial that :func:`fail_stale` failed because its owner stopped beating."""

    number: int
    mlflow_run_id: str | None  # its MLflow run, still RUNNING: the driver closes it (FAILED)
    retry_number: int | None  # the queued retry (WAITING), None when its retries are used up
    reason: str = STALE_REASON


def fail_stale(storage: BaseStorage, study: optuna.Study) -> list[StaleTrial]:
    """Fail the study's stale RUNNING trials (no beat for longer than the study's grace), queue their retries
    and return the trials this process failed (another process may fail some first: those are not returned).

    ``storage`` is the one :func:`~study.storage.open_study_storage` returned, and ``study`` was created or
    loaded with it. RDB: Optuna's ``optuna.storages.fail_stale_trials``; journal: :mod:`study.journal_heartbeat`.
    """
    settings = study_settings(storage, study)
    if isinstance(storage, RDBStorage):
        callback = storage.get_heartbeat_stale_trial_callback()
        if (not isinstance(callback, RetryStaleTrial) or storage.get_heartbeat_interval() != settings.interval
                or storage.grace_period != settings.grace):
            raise ValueError("this RDB storage was not opened with the study's heartbeat settings; open it "
                             "with study.storage.open_study_storage")
        callback.take()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        failed = callback.take()
    elif isinstance(storage, JournalStorage):
        callback = RetryStaleTrial()
        journal_heartbeat.fail_stale_trials(study, storage, _study_id(storage, study), settings.grace, callback)
        failed = callback.take()
    else:
        return []  # in-memory: one process, nothing can go stale
    if not failed:
        return []
    retries = {}
    for t in study.get_trials(deepcopy=False):
        history = t.system_attrs.get("retry_history") or []
        if history:
            retries[history[-1]] = t.number
    return [StaleTrial(t.number, t.user_attrs.get("mlflow_run_id"), retries.get(t.number)) for t in failed]


def is_finished(storage: BaseStorage, study: optuna.Study, number: int) -> bool:
    """True once trial ``number`` is finished in the storage: told by its owner, or failed as stale by
    another process (its owner must then stop it and tell nothing: ``study.tell`` on it raises)."""
    study_id = _study_id(storage, study)
    return storage.get_trial(_trial_id(storage, study_id, number)).state.is_finished()


class Heartbeats:
    """A background thread that beats for a set of trials of one study (see :func:`record_heartbeats`)."""

    def __init__(self, storage: BaseStorage, study: optuna.Study, say: Say = _say_stderr) -> None:
        self.settings = study_settings(storage, study)
        self._storage = storage
        self._study_id = _study_id(storage, study)
        self._journal = isinstance(storage, JournalStorage)
        self._rdb = isinstance(storage, RDBStorage)
        self._ids: dict[int, int] = {}
        self._gone: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._say = say
        self._failing_since: float | None = None

    def _beat(self, number: int, trial_id: int) -> bool:
        """One beat; False when the trial is finished (and no longer to be beaten for)."""
        if self._journal:
            return journal_heartbeat.beat(self._storage, trial_id)
        if self._storage.get_trial(trial_id).state.is_finished():
            return False
        if self._rdb:
            self._storage.record_heartbeat(trial_id)
        return True

    def add(self, number: int) -> None:
        """Beat for trial ``number`` from now on; the first beat is written before this returns."""
        trial_id = _trial_id(self._storage, self._study_id, number)
        alive = self._beat(number, trial_id)
        with self._lock:
            if alive:
                self._ids[number] = trial_id
            else:
                self._gone.add(number)

    def discard(self, number: int) -> None:
        """Stop beating for trial ``number`` (call it once the trial is told)."""
        with self._lock:
            self._ids.pop(number, None)
            self._gone.discard(number)

    @property
    def numbers(self) -> frozenset[int]:
        """The trials beaten for now."""
        with self._lock:
            return frozenset(self._ids)

    def gone(self) -> frozenset[int]:
        """Trials found finished while still added: failed by another process (or told and not discarded)."""
        with self._lock:
            return frozenset(self._gone)

    def beat_all(self) -> None:
        with self._lock:
            items = list(self._ids.items())
        for number, trial_id in items:
            try:
                alive = self._beat(number, trial_id)
            except Exception as e:  # noqa: BLE001 - a storage hiccup: say it once, try again next time
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    self._say(f"heartbeat: cannot reach the storage ({type(e).__name__}); retrying every "
                              f"{self.settings.interval} s (after {self.settings.grace} s others fail the trial)")
                continue
            self._failing_since = None
            if not alive:
                with self._lock:
                    if self._ids.pop(number, None) is not None:
                        self._gone.add(number)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.interval):
            self.beat_all()

    def start(self) -> Heartbeats:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bdense-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Heartbeats:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def record_heartbeats(storage: BaseStorage, study: optuna.Study, trial_numbers: Iterable[int] = (),
                      say: Say = _say_stderr) -> Heartbeats:
    """Beat for ``trial_numbers`` (and those added later with ``.add``) every ``interval`` seconds of the
    study, in a daemon thread, while the returned object is used as a context manager::

        with record_heartbeats(storage, study, [t.number for t in trials]) as beats:
            ...               # train; beats.add(n) for a trial started later
            beats.discard(n)  # after study.tell(n, ...)

    Each trial gets its first beat before this returns (call it right after ``study.ask()``). A trial found
    finished (told, or failed by another process) is no longer beaten for and shows in ``beats.gone()``.
    A storage error in the thread is said once and retried; it never raises into the driver.
    """
    beats = Heartbeats(storage, study, say)
    for number in trial_numbers:
        beats.add(number)
    return beats


def set_fail_reason(storage: BaseStorage, study: optuna.Study, number: int, reason: str) -> bool:
    """Write ``fail_reason`` on a trial that is still running; False if it is already finished."""
    try:
        storage.set_trial_user_attr(_trial_id(storage, _study_id(storage, study), number), "fail_reason",
                                    reason[:2000])
    except UpdateFinishedTrialError:
        return False
    return True
