"""Heartbeats on Optuna's journal storage (a workaround: Optuna 5 has them only in the RDB storage).

Built on public storage methods only, whose behaviour ``tests/test_storage.py`` pins:

- a beat is a trial system attribute (:data:`BEAT_ATTR`, the beater's ``time.time()``) written with
  ``storage.set_trial_system_attr``; any process may write it and every process reads it back;
- writing it on a finished trial raises ``UpdateFinishedTrialError`` in the writing process, so the owner of a
  trial that another process failed learns it at its next beat and stops beating for it;
- ``storage.set_trial_state_values(id, FAIL)`` is decided by the journal's order: of two processes failing the
  same stale trial, exactly one gets ``True`` and the other ``UpdateFinishedTrialError``, so a stale trial is
  failed (and retried) once.

A RUNNING trial is stale when its last beat (or, before its first beat, its start) is more than the study's
grace period old. Beats compare wall clocks: processes that share a journal file across machines (NFS) need
synchronised clocks (NTP); the RDB storage uses the database server's clock instead.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

BEAT_ATTR = "bdense:heartbeat"  # trial system attribute: time.time() of the owner's last beat


def beat(storage: BaseStorage, trial_id: int, now: float | None = None) -> bool:
    """Record a beat for the trial; False (and nothing written) if the trial is finished."""
    try:
        storage.set_trial_system_attr(trial_id, BEAT_ATTR, time.time() if now is None else now)
    except UpdateFinishedTrialError:
        return False
    return True


def last_beat(trial: FrozenTrial) -> float | None:
    """Seconds since the epoch of the trial's last beat, else of its start; None if it has neither."""
    value = trial.system_attrs.get(BEAT_ATTR)
    if value is not None:
        return float(value)
    if trial.datetime_start is not None:
        return trial.datetime_start.timestamp()  # the journal replays it as naive local time
    return None


def stale_trial_ids(storage: BaseStorage, study_id: int, grace: float, now: float | None = None) -> list[int]:
    """Ids of the study's RUNNING trials without a beat for more than ``grace`` seconds."""
    now = time.time() if now is None else now
    stale = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        last = last_beat(t)
        if last is not None and now - last > grace:
            stale.append(storage.get_trial_id_from_study_id_trial_number(study_id, t.number))
    return stale


def fail_stale_trials(study: optuna.Study, storage: BaseStorage, study_id: int, grace: float,
                      callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> list[int]:
    """Fail the stale trials and run ``callback`` on each trial this process failed, like Optuna's
    ``optuna.storages.fail_stale_trials`` does for the RDB storage. Returns the ids this process failed."""
    failed = []
    for trial_id in stale_trial_ids(storage, study_id, grace):
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except UpdateFinishedTrialError:
            pass  # finished meanwhile (by its owner, or failed by another process)
    if callback is not None:
        for trial_id in failed:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return failed
