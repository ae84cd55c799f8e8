"""Run (or resume, or extend) an Optuna study of B-DENSE branch weights, with every trial tracked in MLflow.

    python study/run.py --n-trials 20                 # default preset: cpu, or fmnist-gpu with CUDA
    python study/run.py --preset tiny --n-trials 3    # seconds; what the tests run
    python study/run.py --n-trials 100 --confirm-top 5 --confirm-seeds 3     # screen, then confirm at full length

The same command again continues the same study (its name is derived from the settings unless --study-name
is given). Exit status: 0 done, 2 bad input, 130 interrupted (Ctrl-C; 143 SIGTERM, 129 SIGHUP), 1 otherwise.

The steps, in order: check the inputs and both stores (fast, before any training, so bad input leaves no empty
study behind), load the teacher, open the study, plan its work (baselines, designed grids), run the trials
(this process, or ``--workers`` processes), confirm the screen's best at full length if asked, summarise.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable instead of study/
    _root = str(Path(__file__).resolve().parent.parent)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = _root
    elif _root not in sys.path:
        sys.path.insert(0, _root)

from study.config import StudyConfig, UsageError  # noqa: E402

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def _err(message: str) -> None:
    print(f"bdense-study: error: {message}", file=sys.stderr, flush=True)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    # heartbeats are recorded for ask/tell trials too (study/storage.py), which Optuna warns about
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: handled alike (trials failed cleanly, runs closed KILLED)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_as_interrupt():
    """SIGTERM and SIGHUP end the command like Ctrl-C does (a second signal is ignored during clean-up)."""
    def handler(signum, frame):
        for s in SIGNAL_EXIT:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in SIGNAL_EXIT}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the steps -----------------------------------------------------------------------------------------------
def make_sampler(config: StudyConfig):
    """A sampler seeded uniquely per process (host, pid, time), so that processes never draw the same points;
    constant liar keeps parallel TPE off the points other processes are running."""
    import optuna

    seed = int.from_bytes(os.urandom(4), "little") ^ os.getpid()
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if config.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig):
    import optuna

    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=config.iterations // 2)
    if config.pruner == "hyperband":
        every = max(1, config.iterations // 10)
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=every * 10)
    return optuna.pruners.NopPruner()


def open_tracker(config: StudyConfig):
    """The MLflow store, checked before anything is trained or created (a dead server fails in seconds)."""
    from study.secrets import mask_url
    from study.tracking import Tracker, TrackingError

    try:
        return Tracker.open(config.mlflow_uri, config.artifact_root)
    except TrackingError as e:
        raise UsageError(f"cannot use MLflow tracking URI {mask_url(config.mlflow_uri)!r}: {e}") from None


def prepare_teacher(config: StudyConfig, device, announce: bool):
    """The preset's teacher: the shipped file, the cache, or a training run (announced)."""
    from bdense_core.presets import TEACHERS
    from bdense_core.teacher import get_teacher, teacher_cache_file

    preset = config.preset
    if announce and not preset.teacher_file and not teacher_cache_file(preset.teacher, config.cache_root).exists():
        _note(f"teacher: training the preset {preset.name}'s teacher, {preset.teacher.steps} steps, once (cached under "
              f"{config.cache_root})")
    teacher = get_teacher(preset.teacher, preset.teacher_file, device, root=config.cache_root,
                          progress=announce and sys.stderr.isatty(), train=config.train_teacher)
    if announce:
        if preset.teacher_file and teacher.from_cache:
            shipped = Path(preset.teacher_file).resolve().parent == TEACHERS.resolve()
            how = "shipped with the repository" if shipped else f"from {preset.teacher_file}"
        else:
            how = "loaded from cache" if teacher.from_cache else f"trained in {teacher.wall_time_s:.0f} s"
        _note(f"teacher {teacher.key}: {how}")
    return teacher


def check_resume(config: StudyConfig, storage) -> None:
    """A study that exists must match this command's settings and teacher (checked before any teacher or tracking
    work)."""
    import optuna

    from study import contract as c

    try:
        study = optuna.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        return  # a new study
    held = study.user_attrs.get("compat")
    if held is None:
        if study.get_trials(deepcopy=False):
            raise UsageError(f"study {config.study_name!r} was made by an older bdense-study; analysis/ still reads "
                             f"it, but new trials need a new --study-name")
        return
    used = study.user_attrs.get(c.STUDY_TEACHER_KEY, config.preset.teacher.key)
    if used != config.preset.teacher.key:
        raise UsageError(f"study {config.study_name!r} used teacher {used}, this command's is "
                         f"{config.preset.teacher.key}; use a new --study-name")
    diff = [f"{k} {held[k]!r} (asked: {v!r})" for k, v in config.compatibility().items() if k in held and held[k] != v]
    if diff:
        raise UsageError(f"study {config.study_name!r} was run with other settings: {'; '.join(diff)}; "
                         f"use the same settings or a new --study-name")
    if config.ablation:
        from study.confirm import waiting_confirmation

        left = waiting_confirmation(study, config)
        if left:
            raise UsageError(f"study {config.study_name!r} has {left} confirmation trials still to run, and the grid "
                             f"would take its best configuration from the others; finish the confirmation first "
                             f"(the same command without --ablation)")


def open_study(config: StudyConfig, storage):
    """Create or load the study (its settings and teacher were checked by :func:`check_resume`)."""
    import optuna

    study = optuna.create_study(study_name=config.study_name, storage=storage, sampler=make_sampler(config),
                                pruner=make_pruner(config), direction="minimize", load_if_exists=True)
    if not study.metric_names:  # optuna-dashboard's and trials_dataframe's name for the objective
        study.set_metric_names([config.objective.upper()])
    return study


def record_study(study, config: StudyConfig, teacher, tracker, experiment_id: str, parent_run_id: str,
                 teacher_run_id: str) -> None:
    """The study's user attributes (the contract's names): what every trial shares and where the runs are."""
    from study import contract as c
    from study.secrets import mask_url

    attrs = {
        "compat": config.compatibility(), c.STUDY_PRESET: config.preset.name, c.STUDY_FRAMEWORK: config.framework,
        c.STUDY_NFE: config.nfe, c.STUDY_K_CHOICES: list(config.k_choices), c.STUDY_WEIGHTS_MODE: config.weights_mode,
        c.STUDY_FID_SAMPLES: config.preset.fid_samples, c.STUDY_FID_REFERENCE: config.preset.fid_reference,
        c.STUDY_TEACHER_KEY: teacher.key, c.STUDY_MLFLOW_URI: mask_url(config.mlflow_uri),
        c.STUDY_MLFLOW_EXPERIMENT_ID: experiment_id, c.STUDY_MLFLOW_PARENT_RUN_ID: parent_run_id,
        "mlflow_teacher_run_id": teacher_run_id, c.OBJECTIVE: config.objective, "seeds_per_trial": config.seeds_per_trial,
        "paths": config.paths, **config.settings(),
    }
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def plan_work(study, config: StudyConfig) -> int:
    """Queue what the command must run besides the search: the baselines (when it searches), and a designed
    grid if asked. Returns how many trials the command runs: ``--n-trials``, but with ``--ablation`` at least
    every queued trial, so that the grid always completes (Optuna hands queued trials out first)."""
    from optuna.trial import TrialState

    from study import contract as c
    from study import space

    if config.n_trials:
        queued = space.enqueue_baselines(study, config, {c.FIDELITY: config.length, c.SEEDS: config.seeds})
        if queued:
            _note(f"queued baselines: {', '.join(queued)}")
    if config.ablation:
        from study.designs import best_bdense_params, enqueue_ablation

        n = enqueue_ablation(study, config.ablation, config.k_choices, best_params=best_bdense_params(study),
                             seeds=config.ablation_seeds, nfe_values=config.ablation_nfe,
                             fidelity=config.ablation_length or config.length)
        _note(f"queued ablation '{config.ablation}': {n} configurations")
        return max(config.n_trials, len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
    return config.n_trials


def plan_confirmation(study, config: StudyConfig) -> int:
    """Queue the full-length confirmation of the screen's top configurations and both baselines (missing
    (configuration, seed) pairs only); returns how many trials the phase runs: every queued trial, those an
    earlier, stopped command queued included (workers take queued trials oldest first, whatever their role, so
    counting fewer would leave the newest confirmation trials waiting)."""
    from optuna.trial import TrialState

    from study.confirm import enqueue_confirmation, waiting_confirmation

    n = enqueue_confirmation(study, config)
    confirming = waiting_confirmation(study, config)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if n:
        _note(f"queued confirmation: the top {config.confirm_top} configurations and both baselines at "
              f"{config.confirm_length} length, seeds {config.confirm_seed_list}: {n} trials")
    if confirming > n:
        _note(f"confirmation: {confirming - n} trials queued by an earlier command still to run")
    if waiting > confirming:
        _note(f"also {waiting - confirming} other queued trials (a stopped command's baselines or grid) run now")
    return waiting


def run_phase(config: StudyConfig, study, n_trials: int, stores, reporter) -> tuple[int, object]:
    """Run ``n_trials`` trials here or in ``--workers`` processes; returns (exit code, tally)."""
    from study.workers import run_here, supervise

    if config.workers > 1:
        return supervise(config, study, n_trials, stores, reporter)
    return run_here(config, study, n_trials, stores, reporter)


def run_study(config: StudyConfig) -> int:
    from bdense_core.runtime import best_device

    from study.storage import open_storage, open_study_storage
    from study.summary import ProgressReporter, print_summary, study_summary

    started = time.monotonic()
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    # every check that can fail comes before the study is created: bad input leaves no empty study behind
    check_resume(config, open_storage(config.storage_url))
    tracker = open_tracker(config)
    device = best_device(config.device)
    teacher = prepare_teacher(config, device, announce=True)
    storage, heartbeat = open_study_storage(config.storage_url, config.study_name,
                                            heartbeat_interval=config.heartbeat_interval)
    study = open_study(config, storage)

    experiment_id = tracker.use_experiment(config.study_name)
    parent_run_id = tracker.parent_run(config.study_name, study.user_attrs.get("mlflow_parent_run_id"),
                                       params=config.describe())
    teacher_run_id = tracker.teacher_run(teacher, config.study_name, parent_run_id)
    record_study(study, config, teacher, tracker, experiment_id, parent_run_id, teacher_run_id)
    tracker.set_status(parent_run_id, "RUNNING")
    n_trials = plan_work(study, config)

    stores = dict(storage=storage, heartbeat=heartbeat, tracker=tracker, parent_run_id=parent_run_id, teacher=teacher)
    reporter = ProgressReporter(n_trials, study, live=sys.stdout.isatty())
    code = 0
    try:
        with reporter:
            if n_trials:
                code, _ = run_phase(config, study, n_trials, stores, reporter)
            if config.confirm_top and code == 0:
                n = plan_confirmation(study, config)
                if n:
                    reporter.extend(n)
                    code, _ = run_phase(config, study, n, stores, reporter)
    except Interrupted as e:
        tracker.set_status(parent_run_id, "KILLED")
        _note(interrupted_line(config, reporter))
        return SIGNAL_EXIT.get(e.signum, 130)
    summary = study_summary(study, config, reporter.mine, time.monotonic() - started)
    print_summary(summary, config)
    tracker.finish_study(parent_run_id, summary, ok=code == 0)
    return code


def interrupted_line(config: StudyConfig, reporter) -> str:
    from study.secrets import mask_url

    kept = reporter.count("COMPLETE")
    failed = reporter.interrupted
    which = f"trial{'s' if len(failed) != 1 else ''} #{', #'.join(map(str, failed))} marked failed; " if failed else ""
    return (f"interrupted: {which}{kept} complete trial{'s' if kept != 1 else ''} of this command kept in "
            f"{mask_url(config.storage_url)} and {mask_url(config.mlflow_uri)}; run the same command to continue")


def main(argv: list[str] | None = None) -> int:
    from bdense_core.runtime import cpu_threads
    from study.cli import parse_config

    with signals_as_interrupt():
        try:
            config = parse_config(argv)
            cpu_threads()
        except UsageError as e:
            _err(str(e))
            return 2
        except ValueError as e:  # BDENSE_NUM_THREADS
            _err(str(e))
            return 2
        except Interrupted as e:
            return SIGNAL_EXIT.get(e.signum, 130)
        _quiet()
        from bdense_core.data import DatasetError
        from bdense_core.fid import InceptionNotFound
        from bdense_core.teacher import TeacherFileError
        from study.storage import StorageError

        try:
            return run_study(config)
        except (UsageError, StorageError, DatasetError, InceptionNotFound, TeacherFileError) as e:
            _err(str(e))
            return 2
        except Interrupted as e:  # outside the trials (teacher training, start-up)
            _note("interrupted before the trials started; nothing lost (the teacher resumes from its checkpoint)")
            return SIGNAL_EXIT.get(e.signum, 130)


if __name__ == "__main__":
    sys.exit(main())
