"""Where a study's trials run: in this process, or in ``--workers N`` processes placed over the devices.

:func:`run_here` builds what one process's trials share (teacher, FID evaluator, teacher-path banks, data) and
runs the ask/tell loop (``study/loop.py``). :func:`supervise` starts N worker processes (``multiprocessing``,
spawned, each placed round-robin on ``config.devices``), shows their progress from the storage, and:

- when a worker dies (SIGKILL, OOM), fails its RUNNING trials at once (its owner is certainly gone: same host,
  dead pid), closes their MLflow runs FAILED, queues their retries, and starts a replacement for the rest of the
  dead worker's share;
- on Ctrl-C, SIGTERM or SIGHUP, interrupts every worker (each fails its running trials cleanly and closes their
  runs KILLED) and waits for them; workers also end if the supervisor itself is killed (parent-death signal).
Scale-out across machines is Optuna's: the same command on each machine, one storage, one MLflow server.

Each worker writes its log under ``RUNS/logs/``: its device and share, then a timestamped pace line per training
about every minute (``bdense_core.distill.Pace``: ms an iteration, the share of it the host waited for the
device or delivered records), and any error. For a worker that is slower than it should be,
``BDENSE_STACKS_EVERY=SECONDS`` adds the stack of every thread of the worker to its log every that many seconds:
what the host is doing, sampled. A one-process study (``--workers 1``) writes its pace lines, and the stacks when
asked, to a log of its own there too.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from . import contract as c

POLL_S = 1.0
MAX_RESPAWNS = 4
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def split_trials(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` shared as evenly as possible by ``workers`` processes (no zero shares)."""
    workers = max(1, min(workers, n_trials))
    return [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]


# -- one process ------------------------------------------------------------------------------------------
def build_context(config, study, stores, reporter=None):
    """What this process's trials share: the FID evaluator, the teacher-path banks and the data."""
    from bdense_core.data import load_images
    from bdense_core.evaluate import make_evaluator
    from bdense_core.runtime import best_device

    from .objective import Context

    teacher = stores["teacher"]
    device = best_device(config.device)
    evaluator = make_evaluator(config.preset.data, config.preset.fid_reference, device, root=config.cache_root)
    data = load_images(config.preset.data) if config.fw.needs_data else None
    return Context(config, teacher, evaluator, stores["tracker"], stores["parent_run_id"], paths=Banks(config, teacher),
                   data=data, on_step=reporter.on_step if reporter is not None else None)


class Banks:
    """``(nfe, length, seed) -> TrajectoryBank or None``: the teacher paths a student trains on.

    ``--paths seed``: a bank per training seed with exactly the paths a student draws (iterations x batch),
    drawn without replacement, so two seeds share nothing but the teacher and students of one seed share
    their paths (paired comparisons); ``shared``: one bank for every seed (the preset's size, at least the
    draws of one student); ``fresh``: none (the teacher solves every iteration). Banks are cached on disk by
    the first process that needs them; this process keeps in memory as many as the command has seeds in one
    phase (at least two), since its trials go round those seeds: a grid trial trains every seed in turn and a
    worker's confirmation trials come seed after seed, so keeping fewer reloads a bank for every trial (a
    full-length bank at NFE 2 is 10 GB: a trial that loaded one took 8-10 s longer on
    the H200 machine, 11-13 s outside training against 3 s).
    """

    OFFSET = 10_007  # a bank's x_T stream is seeded apart from the student's draw order

    def __init__(self, config, teacher, keep: int | None = None):
        self.config, self.teacher = config, teacher
        self.keep = keep if keep is not None else self.seeds_in_turn(config)
        self.cache: dict[tuple, Any] = {}

    @staticmethod
    def seeds_in_turn(config) -> int:
        """How many banks a process keeps: the most seeds one phase of the command goes round (at least 2)."""
        return max(2, len(config.seeds), config.confirm_seeds if config.confirm_top else 0,
                   config.ablation_seeds if config.ablation else 0)

    def key(self, nfe: int, length: str, seed: int) -> tuple | None:
        cfg = self.config
        if cfg.paths == "fresh" or not cfg.fw.uses_bank:
            return None
        return (nfe, length, seed if cfg.paths == "seed" else cfg.seed)

    def __call__(self, nfe: int, length: str, seed: int):
        key = self.key(nfe, length, seed)
        if key is None:
            return None
        if key in self.cache:
            self.cache[key] = self.cache.pop(key)  # the most recently used goes last: the first is evicted first
        else:
            self._fetch(key, wait=True)
        return self.cache[key]

    def prefetch(self, wanted) -> None:
        """Get the banks of ``wanted`` ``(nfe, length, seed)`` ready, building first those no other process is
        building: workers that need the same few banks (the seeds of a grid) build different ones at the same
        time instead of the same one each; the rest are then waited for when asked."""
        keys = dict.fromkeys(k for k in (self.key(*w) for w in wanted) if k is not None and k not in self.cache)
        for key in keys:
            self._fetch(key, wait=False)

    def spec(self, key: tuple) -> dict:
        """How the bank of ``key`` (:meth:`key`) is asked for: the framework's ``shared_paths`` arguments."""
        from bdense_core.schedule import BranchWeights

        cfg = self.config
        nfe, length, seed = key
        grid = cfg.trial_config(max(cfg.k_choices), BranchWeights(), seed, nfe, length)
        draws = grid.iterations * grid.batch_size
        size = draws if cfg.paths == "seed" else max(cfg.preset.bank_size, draws)
        return dict(config=grid, size=size, seed=seed + self.OFFSET, root=cfg.cache_root,
                    k_choices=tuple(cfg.k_choices))

    def _fetch(self, key: tuple, wait: bool) -> None:
        cfg = self.config
        spec = self.spec(key)
        bank = cfg.fw.shared_paths(self.teacher, spec.pop("config"), wait=wait, **spec)
        if bank is None and not wait:
            return  # another process is building it
        while len(self.cache) >= self.keep:
            self.cache.pop(next(iter(self.cache)))
        self.cache[key] = bank


def run_here(config, study, n_trials: int, stores, reporter) -> tuple[int, Any]:
    """Run ``n_trials`` trials in this process; returns (exit code, tally)."""
    from .loop import Loop
    from .storage import record_heartbeats

    log_dir = config.runs_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # the pace lines a worker writes to its log (bdense_core.distill.Pace), and the stacks BDENSE_STACKS_EVERY asks
    # for, here too: a one-process study's log
    with open(log_dir / f"{config.study_name}-process-{os.getpid()}.log", "a", buffering=1) as log:
        stop = pace_lines(log)
        stop_stacks = stacks_as_asked(log)
        try:
            ctx = build_context(config, study, stores, reporter)
            tracker = ctx.tracker
            with record_heartbeats(stores["storage"], study) as beats:
                loop = Loop(study, ctx, stores["storage"], beats, reporter=reporter)
                if reporter is not None:
                    reporter.loop = loop
                tally = loop.run(n_trials, config.timeout)
        finally:
            stop_stacks()
            stop()
    if tally.stopped_by_failures:
        print(f"bdense-study: error: {tally.by_state['FAIL'][-1:]} and the trials before it failed in a row; "
              f"stopped. Last reason: {tally.last_reason}", file=sys.stderr, flush=True)
        return 1, tally
    del tracker
    return 0, tally


# -- several processes ------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (a SIGKILLed supervisor)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def pace_lines(log):
    """Write the training loops' pace lines (and bdense_core's other INFO lines), timestamped, to ``log``; returns
    a function that stops it (for a study run in this process, whose logger outlives the run)."""
    import logging

    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("bdense_core")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the console shows its own progress; these lines go to the log only

    def stop() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate

    return stop


def worker_log(log) -> None:
    """Send this worker's diagnostics to its log ``log``: the training loops' pace lines (timestamped), and with
    ``BDENSE_STACKS_EVERY=SECONDS`` every thread's stack every that many seconds (:func:`sample_stacks`)."""
    pace_lines(log)
    stacks_as_asked(log)


def stacks_as_asked(log):
    """:func:`sample_stacks` into ``log`` when ``BDENSE_STACKS_EVERY`` asks for it; returns a function that stops it."""
    every = os.environ.get("BDENSE_STACKS_EVERY", "")
    if every:
        try:
            seconds = float(every)
            if not seconds > 0:
                raise ValueError
        except ValueError:
            print(f"BDENSE_STACKS_EVERY={every!r} ignored: give seconds > 0", flush=True)
        else:
            return sample_stacks(log, seconds)
    return lambda: None


def sample_stacks(log, every: float):
    """A daemon thread that writes the stack of every other thread of this process to ``log`` every ``every``
    seconds, headed by the time; returns a function that stops it. It reads them with ``sys._current_frames()``
    while it holds the GIL (``faulthandler.dump_traceback_later`` reads them without it, and crashed workers with
    SIGSEGV here), so a sample comes late while a thread keeps the GIL: a gap between two headers says so."""
    import threading
    import traceback

    stopped = threading.Event()

    def run() -> None:
        me = threading.get_ident()
        while not stopped.wait(every):
            names = {t.ident: t.name for t in threading.enumerate()}
            parts = [f"{time.strftime('%H:%M:%S')} stacks of pid {os.getpid()}:\n"]
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    parts.append(f"thread {names.get(ident, ident)} (most recent call last):\n")
                    parts.extend(traceback.format_stack(frame))
            log.write("".join(parts))
            log.flush()

    thread = threading.Thread(target=run, name="bdense-stacks", daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join()

    return stop


def _worker_main(config, index: int, quota: int, log_path: str) -> None:
    """A worker process: its own stores, teacher and context; the same loop as :func:`run_here`."""
    _die_with_parent()
    log = open(log_path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    worker_log(log)
    from study.run import Interrupted, SIGNAL_EXIT, _quiet, open_tracker, prepare_teacher, signals_as_interrupt

    _quiet()
    with signals_as_interrupt():
        try:
            from bdense_core.runtime import best_device, cpu_threads

            from .storage import open_study_storage

            threads = cpu_threads()  # before its CPU work: banks and the teacher load, the study opens

            storage, heartbeat = open_study_storage(config.storage_url, config.study_name, say=lambda _: None)
            import optuna

            from .run import make_pruner, make_sampler

            study = optuna.load_study(study_name=config.study_name, storage=storage, sampler=make_sampler(config),
                                      pruner=make_pruner(config))
            tracker = open_tracker(config)
            tracker.use_experiment(config.study_name)
            device = best_device(config.device)
            if device.type == "cuda" and device.index is not None:
                import torch

                torch.cuda.set_device(device)  # else pinning host memory opens a second context on cuda:0
            teacher = prepare_teacher(config, device, announce=False)
            stores = dict(storage=storage, heartbeat=heartbeat, tracker=tracker, teacher=teacher,
                          parent_run_id=study.user_attrs[c.STUDY_MLFLOW_PARENT_RUN_ID])
            print(f"worker {index} (pid {os.getpid()}) on {config.device}, {threads} CPU thread"
                  f"{'s' if threads > 1 else ''}: {quota} trial(s)", flush=True)
            code, _ = run_here(config, study, quota, stores, None)
        except Interrupted as e:
            code = SIGNAL_EXIT.get(e.signum, 130)
        except Exception:  # noqa: BLE001 - the supervisor shows the log's last line
            import traceback

            traceback.print_exc()
            code = 1
    try:  # os._exit runs no exit handlers: the compile cache's own save among them
        from bdense_core.fast import flush_compile_cache

        flush_compile_cache()
    except Exception as e:  # noqa: BLE001 - a cache is an optimisation; the worker's exit status is what counts
        print(f"worker {index}: compile cache not saved ({type(e).__name__}: {e})", flush=True)
    log.flush()
    os._exit(code)


def fail_dead_owner(storage, study, pid: int, reason: str) -> tuple[list[int], list[str]]:
    """Fail the RUNNING trials of worker ``pid`` (dead: same host, its exit seen), queue their retries as a
    stale trial's would be; returns their numbers and their MLflow run ids (to close). Trials finished
    meanwhile are skipped."""
    from .storage import RetryStaleTrial, set_fail_reason

    retry, numbers, run_ids = RetryStaleTrial(), [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(c.WORKER_PID) != pid or not set_fail_reason(storage, study, t.number, reason):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        retry(study, study.get_trials(deepcopy=False)[t.number])
        numbers.append(t.number)
        if t.user_attrs.get(c.MLFLOW_RUN_ID):
            run_ids.append(t.user_attrs[c.MLFLOW_RUN_ID])
    return numbers, run_ids


@dataclass
class _Slot:
    index: int
    device: str
    quota: int
    proc: Any = None
    pids: list[int] = field(default_factory=list)
    respawns: int = 0
    log_path: Path | None = None


class Supervisor:
    def __init__(self, config, study, stores, reporter):
        self.config, self.study, self.stores, self.reporter = config, study, stores, reporter
        self.log_dir = config.runs_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ctx = mp.get_context("spawn")
        self.errors: list[str] = []
        self.known = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}

    def _spawn(self, slot: _Slot, quota: int) -> None:
        cfg = replace(self.config, devices=(slot.device,), workers=1)
        # each worker's share of the cores it may run on, for its CPU work (bdense_core.runtime.cpu_threads)
        from bdense_core.runtime import THREADS_ENV, usable_cores

        os.environ.setdefault(THREADS_ENV, str(max(1, usable_cores() // self.config.workers)))
        slot.log_path = self.log_dir / f"{cfg.study_name}-worker{slot.index}-{len(slot.pids)}.log"
        slot.proc = self.ctx.Process(target=_worker_main, args=(cfg, slot.index, quota, str(slot.log_path)),
                                     name=f"bdense-worker-{slot.index}")
        slot.proc.start()
        slot.quota = quota
        slot.pids.append(slot.proc.pid)

    def _pids(self, slots) -> set[int]:
        return {pid for s in slots for pid in s.pids}

    def _poll(self, slots) -> None:
        """Report trials finished by our workers (not by other machines)."""
        pids = self._pids(slots)
        for t in self.study.get_trials(deepcopy=False, states=FINISHED):
            if t.number not in self.known and t.user_attrs.get(c.WORKER_PID) in pids:
                self.known.add(t.number)
                self.reporter.trial_finished(self.study, t)

    def _used_by(self, pid: int) -> int:
        """Trials of worker ``pid``'s share that are done; a failed trial that was queued again is not."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in (t.system_attrs.get("retry_history") or [])}
        return sum(1 for t in trials if t.state in FINISHED and t.user_attrs.get(c.WORKER_PID) == pid
                   and t.number not in retried)

    def _handle_exit(self, slot: _Slot) -> None:
        rc = slot.proc.exitcode
        pid = slot.proc.pid
        slot.proc = None
        if rc == 0:
            return
        if rc < 0:  # killed by a signal: its trials are failed now (its owner is certainly gone) and retried
            _, run_ids = fail_dead_owner(self.stores["storage"], self.study, pid, f"its process (pid {pid}) was killed by signal {-rc} and stopped "
                                                       f"sending heartbeats; the parameters were queued again")
            self.stores["tracker"].close_runs(run_ids, "FAILED", "its worker process was killed")
            print(f"worker {slot.index} (pid {pid}) was killed by signal {-rc}; its trial was failed and queued again",
                  file=sys.stderr, flush=True)
            remaining = slot.quota - self._used_by(pid)
            if remaining > 0 and slot.respawns < MAX_RESPAWNS:
                slot.respawns += 1
                print(f"worker {slot.index}: starting a replacement for the remaining {remaining} trial(s)",
                      file=sys.stderr, flush=True)
                self._spawn(slot, remaining)
            return
        if rc in (130, 143, 129):
            return
        self.errors.append(f"worker {slot.index} exited with status {rc}: {_last_line(slot.log_path)}")
        print(self.errors[-1], file=sys.stderr, flush=True)

    def run(self, n_trials: int) -> int:
        devices = self.config.devices
        shares = split_trials(n_trials, self.config.workers)
        slots = [_Slot(i, devices[i % len(devices)], q) for i, q in enumerate(shares)]
        for slot in slots:
            self._spawn(slot, slot.quota)
        print(f"{len(slots)} workers started on {', '.join(s.device for s in slots)} (shares {shares}); logs in "
              f"{self.log_dir}", file=sys.stderr, flush=True)
        try:
            while any(s.proc is not None for s in slots):
                for slot in slots:
                    if slot.proc is not None and not slot.proc.is_alive():
                        slot.proc.join()
                        self._handle_exit(slot)
                self._poll(slots)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self._stop(slots)
            self._poll(slots)
            raise
        self._poll(slots)
        return 1 if self.errors else 0

    def _stop(self, slots, wait_s: float = 90.0) -> None:
        alive = [s.proc for s in slots if s.proc is not None and s.proc.is_alive()]
        for p in alive:
            os.kill(p.pid, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        for p in alive:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()


def _last_line(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def supervise(config, study, n_trials: int, stores, reporter) -> tuple[int, Any]:
    """Run ``n_trials`` trials in ``config.workers`` processes; returns (exit code, None)."""
    return Supervisor(config, study, stores, reporter).run(n_trials), None
