"""One process's share of a study: Optuna's ask/tell loop over groups of trials that train together.

Each turn the process fails the study's stale trials (their owners stopped beating), asks Optuna for as many
trials as its students allow (trials of one group share their NFE and training length; several seeds of a
trial are several students), beats for them while they train, and tells each its own result. A trial that
another process failed meanwhile (its heartbeat looked stale) ends cleanly here: its MLflow run is closed
FAILED and the loop goes on. Ctrl-C, SIGTERM and SIGHUP fail the running trials, close their runs KILLED and
propagate as KeyboardInterrupt.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from bdense_core.runtime import device_label

from . import contract as c
from .objective import Context, Outcome, run_trials
from .storage import fail_stale, is_finished, set_fail_reason

MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class Tally:
    """What this process did: trial numbers by final state (COMPLETE, PRUNED, FAIL)."""

    by_state: dict[str, list[int]] = field(default_factory=lambda: {"COMPLETE": [], "PRUNED": [], "FAIL": []})
    lost: list[int] = field(default_factory=list)  # failed by another process while this one ran them
    stopped_by_failures: bool = False
    last_reason: str | None = None

    @property
    def finished(self) -> int:
        return sum(len(v) for v in self.by_state.values())


def owner_attrs() -> dict:
    """Who runs a trial: host and process (the supervisor shows them; a resumed command on the same host
    fails a RUNNING trial at once when its process is gone)."""
    return {c.HOSTNAME: socket.gethostname(), c.WORKER_PID: os.getpid()}


def _group_key(trial: optuna.Trial, ctx: Context) -> tuple:
    u = trial.user_attrs
    return int(u.get(c.NFE, ctx.config.nfe)), u.get(c.FIDELITY, ctx.config.length)


def _students(trial: optuna.Trial, ctx: Context) -> int:
    return len(trial.user_attrs.get(c.SEEDS, ctx.config.seeds))


class Loop:
    """The ask/tell loop of one process (see the module docstring)."""

    def __init__(self, study: optuna.Study, ctx: Context, storage, beats, reporter=None):
        self.study, self.ctx, self.storage = study, ctx, storage
        self.beats = beats  # study.heartbeat.Heartbeats: add(number), discard(number), gone()
        self.reporter = reporter
        self.pending: list[optuna.Trial] = []
        self.running: list[optuna.Trial] = []
        self.tally = Tally()

    def _ask(self, budget: int) -> list[optuna.Trial]:
        """Trials that train together: at most ``students_per_worker`` students (at least one trial).

        The group is built in ``self.running`` itself and a trial moves between it and ``self.pending`` by adding
        before removing, so a Ctrl-C that lands while a trial is asked for or labelled finds it held, and
        ``abandon`` fails it (session 12's interrupted PD study left such a trial RUNNING in the store)."""
        room = self.ctx.config.students_per_worker
        group = self.running = []
        while len(group) < budget and sum(_students(t, self.ctx) for t in group) < room:
            if self.pending:
                group.append(self.pending[0])
                self.pending.pop(0)
            else:
                group.append(self.study.ask())
                self.beats.add(group[-1].number)
                for key, value in {**owner_attrs(), c.DEVICE: device_label(self.ctx.teacher.device)}.items():
                    group[-1].set_user_attr(key, value)
            trial = group[-1]
            if len(group) > 1 and (_group_key(trial, self.ctx) != _group_key(group[0], self.ctx)
                                   or sum(_students(t, self.ctx) for t in group) > room):
                self.pending.append(trial)
                group.pop()
                break
        return group

    def _tell(self, o: Outcome) -> None:
        number = o.trial.number
        try:
            if is_finished(self.storage, self.study, number):  # another process failed it as stale meanwhile
                self.tally.lost.append(number)
                run_id = o.trial.user_attrs.get(c.MLFLOW_RUN_ID)
                if run_id:
                    self.ctx.tracker.close_runs([run_id], "FAILED", "failed by another process while this one ran "
                                                "it (its heartbeat looked stale); its retry is queued")
                return
            if o.state == TrialState.COMPLETE:
                self.study.tell(o.trial, o.value, skip_if_finished=True)
            else:
                self.study.tell(o.trial, state=o.state, skip_if_finished=True)
        finally:
            self.beats.discard(number)
        self.tally.by_state[o.state.name].append(number)
        if o.state == TrialState.FAIL:
            self.tally.last_reason = o.reason
        if self.reporter is not None:
            frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == number), None)
            if frozen is not None:
                self.reporter.trial_finished(self.study, frozen)

    def run(self, n_trials: int, timeout: float | None = None) -> Tally:
        """Run up to ``n_trials`` trials (fewer after ``timeout`` seconds, or after repeated errors)."""
        start = time.monotonic()
        streak = 0
        done = 0
        try:
            while done < n_trials:
                if timeout is not None and time.monotonic() - start > timeout:
                    break
                run_ids = [s.mlflow_run_id for s in fail_stale(self.storage, self.study) if s.mlflow_run_id]
                if run_ids:
                    self.ctx.tracker.close_runs(run_ids, "FAILED", "its process stopped sending heartbeats; "
                                                "the trial was failed and queued again")
                self.running = self._ask(n_trials - done)
                outcomes = run_trials(self.running, self.ctx)
                for o in outcomes:
                    self._tell(o)
                    streak = streak + 1 if o.state == TrialState.FAIL else 0
                done += len(self.running)
                self.running = []
                if streak >= MAX_CONSECUTIVE_FAILURES:
                    self.tally.stopped_by_failures = True
                    break
        except KeyboardInterrupt:
            self.abandon("interrupted")
            raise
        finally:
            self.abandon("the command ended before this trial could run")
        return self.tally

    def abandon(self, reason: str) -> None:
        """Fail the trials this process holds (running or asked for but not started) and close their runs."""
        held = list({t.number: t for t in self.running + self.pending}.values())  # one trial may be in both
        self.running, self.pending = [], []
        for trial in held:
            run_id = trial.user_attrs.get(c.MLFLOW_RUN_ID)
            if set_fail_reason(self.storage, self.study, trial.number, reason):  # False: finished meanwhile
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                self.tally.by_state["FAIL"].append(trial.number)
            if run_id:
                self.ctx.tracker.close_runs([run_id], "KILLED", reason)
            self.beats.discard(trial.number)
