"""``--workers N``: N processes that share one study through its storage, watched by the starting process.

The starting process has already trained the teacher, warmed the FID cache, created the MLflow parent run
and queued the baselines; each worker is ``python -m study.run`` with the same flags plus a hidden
``--_worker-index`` and its share of ``--n-trials``, and runs ``optimize`` on the same storage (Optuna
hands every trial to exactly one process). The supervisor prints progress from the storage, forwards
Ctrl-C, and when a worker is killed (SIGKILL, OOM) it waits until the dead worker's trial has gone without a
heartbeat for the grace period, fails it (Optuna's retry callback queues it again) and starts a replacement
worker for the rest of the dead one's share, so no trial is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from .cli import StudyConfig
from .storage import GRACE_FACTOR, fail_stale_trials

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 1.0
MAX_RESPAWNS = 4
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def split_trials(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` shared as evenly as possible by ``workers`` processes (no zero shares)."""
    workers = max(1, min(workers, n_trials))
    return [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]


@dataclass
class _Slot:
    index: int
    quota: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    dead_since: float | None = None  # killed; waiting for its trial to go stale
    respawns: int = 0
    history: list[int] = field(default_factory=list)  # pids that served this slot


class WorkerPool:
    def __init__(self, config: StudyConfig, study: optuna.Study, reporter, on_stale=None):
        self.config = config
        self.study = study
        self.reporter = reporter
        self.on_stale = on_stale  # called after trials were failed as stale (closes their MLflow runs)
        self.log_dir = config.runs_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.known = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
        self.errors: list[str] = []
        self.interrupted = False

    def _command(self, index: int, quota: int) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "study.run", *c.argv,
            "--preset", c.preset.name, "--study-name", c.study_name, "--storage", c.storage_url,
            "--mlflow-uri", c.mlflow_uri, "--runs-dir", str(c.runs_dir), "--workers", "1",
            "--n-trials", str(quota), "--_worker-index", str(index),
        ]

    def _spawn(self, slot: _Slot, quota: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        if self.config.device in (None, "cpu"):
            env.setdefault("BDENSE_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.config.workers)))
        slot.log_path = self.log_dir / f"{self.config.study_name}-worker{slot.index}-{len(slot.history)}.log"
        log = open(slot.log_path, "w")
        slot.proc = subprocess.Popen(
            self._command(slot.index, quota), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=os.getcwd(), start_new_session=True,  # Ctrl-C reaches workers through us, once
        )
        log.close()
        slot.quota = quota
        slot.history.append(slot.proc.pid)

    def _poll_trials(self) -> None:
        for t in self.study.get_trials(deepcopy=False, states=FINISHED):
            if t.number not in self.known:
                self.known.add(t.number)
                self.reporter.trial_finished(self.study, t)

    def _used_by(self, pid: int) -> int:
        """Trials a (dead) worker used up; its stale trial does not count (it was queued again)."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        return sum(1 for t in trials
                   if t.state in FINISHED and t.user_attrs.get("worker_pid") == pid and t.number not in retried)

    def _handle_dead(self, slot: _Slot, now: float) -> None:
        grace = GRACE_FACTOR * self.config.heartbeat_interval
        if fail_stale_trials(self.study) and self.on_stale is not None:
            self.on_stale()
        pid = slot.history[-1]
        still_running = any(t.user_attrs.get("worker_pid") == pid
                            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if still_running and now - slot.dead_since < grace + 3 * self.config.heartbeat_interval + 10:
            return  # not stale yet
        slot.dead_since = None
        remaining = slot.quota - self._used_by(pid)
        if remaining > 0 and slot.respawns < MAX_RESPAWNS:
            slot.respawns += 1
            print(f"worker {slot.index}: starting a replacement for the remaining {remaining} trial(s)",
                  file=sys.stderr, flush=True)
            self._spawn(slot, remaining)
        else:
            slot.proc = None

    def run(self) -> int:
        """Start the workers and wait for them; returns 0, 130 (Ctrl-C) or 1 (a worker crashed)."""
        slots = [_Slot(i, q) for i, q in enumerate(split_trials(self.config.n_trials, self.config.workers))]
        for slot in slots:
            self._spawn(slot, slot.quota)
        print(f"{len(slots)} workers started (shares {[s.quota for s in slots]}); logs in {self.log_dir}",
              file=sys.stderr, flush=True)
        try:
            while True:
                now = time.monotonic()
                for slot in slots:
                    if slot.dead_since is not None:
                        self._handle_dead(slot, now)
                        continue
                    if slot.proc is None or slot.proc.poll() is None:
                        continue
                    rc = slot.proc.returncode
                    if rc == 0:
                        slot.proc = None
                    elif rc == 130:
                        self.interrupted = True
                        slot.proc = None
                    elif rc < 0 or rc in (137, 143):  # killed by a signal
                        sig = -rc if rc < 0 else rc - 128
                        print(f"worker {slot.index} (pid {slot.proc.pid}) was killed by signal {sig}; its trial will "
                              f"be failed once its heartbeat is stale, and queued again", file=sys.stderr, flush=True)
                        slot.dead_since = now
                    else:
                        tail = self._tail(slot.log_path)
                        self.errors.append(f"worker {slot.index} exited with status {rc}: {tail}")
                        print(self.errors[-1], file=sys.stderr, flush=True)
                        slot.proc = None
                self._poll_trials()
                if all(s.proc is None and s.dead_since is None for s in slots):
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.interrupted = True
            self._stop(slots)
        self._poll_trials()
        if self.interrupted:
            return 130
        return 1 if self.errors else 0

    def _stop(self, slots: list[_Slot], wait_s: float = 120.0) -> None:
        alive = [s.proc for s in slots if s.proc is not None and s.proc.poll() is None]
        for p in alive:
            p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + wait_s
        for p in alive:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    @staticmethod
    def _tail(path: Path | None) -> str:
        if path is None or not path.exists():
            return ""
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else ""
