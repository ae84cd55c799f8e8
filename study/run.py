"""Run (or resume, or extend) an Optuna study of B-DENSE branch weights, with every trial tracked in MLflow.

    python study/run.py --n-trials 20                 # default preset: cpu, or fmnist-gpu with CUDA
    python study/run.py --preset tiny --n-trials 3    # seconds; what the tests run
    python study/run.py --n-trials 10 --workers 2     # two processes on one study

The same command again continues the same study (its name is derived from the settings unless
--study-name is given). Exit status: 0 done, 2 bad input, 130 interrupted (Ctrl-C), 1 otherwise.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable instead of study/
    _root = str(Path(__file__).resolve().parent.parent)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = _root
    elif _root not in sys.path:
        sys.path.insert(0, _root)

from study.cli import StudyConfig, UsageError, parse_config  # noqa: E402

# What a resumed study must share with the command that resumes it (else its FIDs are not comparable).
COMPATIBLE_ATTRS = ("preset", "framework", "nfe", "weights_mode", "k_choices", "fid_samples", "iterations",
                    "bank_size")
MAX_CONSECUTIVE_FAILURES = 3


def _err(message: str) -> None:
    print(f"bdense-study: error: {message}", file=sys.stderr, flush=True)


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    warnings.filterwarnings("ignore", message=".*RetryFailedTrialCallback.*")


def make_sampler(config: StudyConfig, n_existing: int):
    import optuna

    # a different seed per worker and per resume, so that random start-up points are not drawn twice
    seed = config.seed + 1000 * (config.worker_index or 0) + 7919 * n_existing
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=config.workers > 1 or config.worker_index is not None)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if config.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig):
    import optuna

    reports = 10 * config.seeds_per_trial  # _StepHook reports about 10 times per seed
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=config.iterations // 2)
    if config.pruner == "hyperband":
        every = max(1, config.iterations // 10)
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=every * reports)
    return optuna.pruners.NopPruner()


def _count_trials(storage, name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def check_compatible(study, config: StudyConfig) -> None:
    held = study.user_attrs
    if "preset" not in held:
        return
    wanted = dict(preset=config.preset.name, framework=config.framework, nfe=config.nfe,
                  weights_mode=config.weights_mode, k_choices=list(config.k_choices),
                  fid_samples=config.preset.fid_samples, iterations=config.iterations,
                  bank_size=config.preset.bank_size)
    diff = [f"{k} {held[k]!r} (asked: {wanted[k]!r})" for k in COMPATIBLE_ATTRS if k in held and held[k] != wanted[k]]
    if diff:
        raise UsageError(f"study {config.study_name!r} was run with other settings: {'; '.join(diff)}; "
                         f"use the same settings or a new --study-name")


def prepare_teacher(config: StudyConfig, device, live: bool):
    from bdense_core.teacher import load_teacher, train_teacher

    preset = config.preset
    if preset.teacher_file and Path(preset.teacher_file).is_file():
        teacher = load_teacher(preset.teacher_file, device)
        if teacher.key == preset.teacher.key:  # the shipped teacher of exactly this config
            teacher.from_cache = True
            return teacher
    if config.worker_index is None:
        print(f"teacher: preset {preset.name}, {preset.teacher.steps} steps (cached under {config.cache_root})",
              file=sys.stderr, flush=True)
    teacher = train_teacher(preset.teacher, device, root=config.cache_root, progress=live)
    if config.worker_index is None:
        how = "loaded from cache" if teacher.from_cache else f"trained in {teacher.wall_time_s:.0f} s"
        print(f"teacher {teacher.key}: {how}", file=sys.stderr, flush=True)
    return teacher


def close_orphan_runs(tracker, study) -> None:
    """MLflow runs of trials that Optuna failed for a dead process are still RUNNING: close them."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if not run_id:
            continue
        try:
            if tracker.client.get_run(run_id).info.status == "RUNNING":
                tracker.set_tags(run_id, {"fail_reason": t.user_attrs.get("fail_reason", "process died")[:4000]})
                tracker.set_status(run_id, "FAILED")
        except Exception:  # noqa: BLE001 - the run lives in another store
            pass


def _fail_running_of_this_process(study) -> int | None:
    """After Ctrl-C: no trial of this process may stay RUNNING (Optuna usually failed it already)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker_pid") == os.getpid():
            try:
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted (Ctrl-C)")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except Exception:  # noqa: BLE001
                pass
            return t.number
    return None


class _FailureGuard:
    """Stops the study after several trials in a row failed with an error (a bug, not a bad point)."""

    def __init__(self):
        self.streak = 0
        self.tripped = False

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= MAX_CONSECUTIVE_FAILURES:
            self.tripped = True
            study.stop()


def _queued_nfes(study) -> set[int]:
    """NFEs of enqueued trials that run at their own NFE (the nfe ablation)."""
    from optuna.trial import TrialState

    return {int(t.user_attrs["nfe"]) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if "nfe" in t.user_attrs}


def make_bank_provider(config: StudyConfig, teacher, announce: bool):
    """NFE -> the study's shared trajectory bank on that NFE's grid (SFD with bank_size > 0), else None.

    A bank is built once, saved in the cache and loaded by every other process of the study; it keeps only
    the teacher states that the study's K choices train on."""
    fw = config.fw
    if not fw.uses_bank or config.preset.bank_size <= 0:
        return None
    from bdense_core.schedule import BranchWeights

    banks: dict[int, object] = {}

    def get(nfe: int):
        if nfe not in banks:
            grid_config = config.distill_config(max(config.k_choices), BranchWeights(), config.seed, nfe)
            if announce:
                print(f"teacher trajectories: a bank of {config.preset.bank_size} at NFE {nfe} (cached in "
                      f"{config.cache_root / 'banks'})", file=sys.stderr, flush=True)
            banks[nfe] = fw.shared_paths(teacher, grid_config, size=config.preset.bank_size,
                                         seed=config.seed + 10_007, root=config.cache_root,
                                         k_choices=tuple(config.k_choices))
        return banks[nfe]

    return get


def run_study(config: StudyConfig, storage) -> int:
    import optuna

    from bdense_core.runtime import best_device

    from study import space
    from study.objective import StudyContext, make_objective
    from study.summary import ProgressReporter, print_summary, study_summary
    from study.storage import fail_stale_trials
    from study.tracking import Tracker
    from study.workers import WorkerPool

    is_worker = config.worker_index is not None
    live = sys.stdout.isatty() and not is_worker
    started = time.monotonic()
    if os.environ.get("BDENSE_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["BDENSE_NUM_THREADS"]))
    config.runs_dir.mkdir(parents=True, exist_ok=True)

    n_existing = _count_trials(storage, config.study_name)
    study = optuna.create_study(
        study_name=config.study_name, storage=storage, sampler=make_sampler(config, n_existing),
        pruner=make_pruner(config), direction="minimize", load_if_exists=True,
    )
    check_compatible(study, config)
    try:
        device = best_device(config.device)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    if device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # fixed shapes within a trial: let cuDNN pick its kernels

    teacher = prepare_teacher(config, device, live)
    if "teacher_key" in study.user_attrs and study.user_attrs["teacher_key"] != teacher.key:
        raise UsageError(f"study {config.study_name!r} used teacher {study.user_attrs['teacher_key']}, this preset "
                         f"gives {teacher.key}; use a new --study-name")

    try:
        tracker = Tracker(config.mlflow_uri, config.artifact_root)
        experiment_id = tracker.use_experiment(config.study_name)
        parent_run_id = tracker.parent_run(config.study_name, study.user_attrs.get("mlflow_parent_run_id"),
                                           params=config.describe())
    except Exception as e:  # noqa: BLE001 - an unusable tracking URI is bad input
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot use MLflow tracking URI {config.mlflow_uri!r}: {reason}") from None

    if not is_worker:
        teacher_run_id = tracker.teacher_run(teacher, config.study_name, parent_run_id)
        attrs = dict(
            preset=config.preset.name, framework=config.framework, nfe=config.nfe,
            fid_samples=config.preset.fid_samples, fid_reference=config.preset.fid_reference,
            teacher_key=teacher.key, mlflow_experiment_id=experiment_id, mlflow_parent_run_id=parent_run_id,
            mlflow_teacher_run_id=teacher_run_id, mlflow_uri=config.mlflow_uri, k_choices=list(config.k_choices),
            weights_mode=config.weights_mode, iterations=config.iterations, seeds_per_trial=config.seeds_per_trial,
            bank_size=config.preset.bank_size,
            teacher_substeps=config.teacher_substeps,
        )
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
        tracker.set_status(parent_run_id, "RUNNING")
        fail_stale_trials(study)
        close_orphan_runs(tracker, study)
        queued = space.enqueue_baselines(study, config)
        if queued:
            print(f"queued baselines: {', '.join(queued)}", file=sys.stderr, flush=True)
        if config.ablation:
            from analysis.ablation import best_bdense_params, enqueue_ablation

            n = enqueue_ablation(study, config.ablation, config.k_choices, best_params=best_bdense_params(study),
                                 seeds=config.ablation_seeds)
            print(f"queued ablation '{config.ablation}': {n} configurations", file=sys.stderr, flush=True)

    banks = make_bank_provider(config, teacher, announce=not is_worker)
    if banks is not None and not is_worker:
        for nfe in sorted({config.nfe} | _queued_nfes(study)):
            banks(nfe)  # built (or loaded) once here; the workers load it from the cache
        if config.workers > 1:
            banks = None  # this process only supervises; free the GPU memory for the workers
            import gc

            gc.collect()

    from bdense_core.evaluate import make_evaluator

    evaluator = make_evaluator(config.preset.data, config.preset.fid_reference, device, root=config.cache_root)
    finished_before = {t.number for t in study.get_trials(deepcopy=False)
                       if t.state.is_finished()}
    reporter = ProgressReporter(config.n_trials, study, live=live)
    code = 0
    guard = _FailureGuard()
    try:
        if config.workers > 1 and not is_worker:
            del evaluator  # the reference statistics are cached now; each worker loads its own evaluator
            pool = WorkerPool(config, study, reporter, on_stale=lambda: close_orphan_runs(tracker, study))
            with reporter:
                code = pool.run()
            close_orphan_runs(tracker, study)
        else:
            data = None
            if config.fw.needs_data:
                from bdense_core.data import load_images

                data = load_images(config.preset.data)
            ctx = StudyContext(config, teacher, evaluator, tracker, parent_run_id, data=data, banks=banks,
                               on_step=reporter.on_step)
            with reporter:
                study.optimize(make_objective(ctx), n_trials=config.n_trials, timeout=config.timeout,
                               catch=(Exception,), callbacks=[reporter.trial_finished, guard])
            if guard.tripped:
                _err(f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed; stopped. Last reason: "
                     f"{study.trials[-1].user_attrs.get('fail_reason', '?')}")
                code = 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the clean-up
        number = _fail_running_of_this_process(study)
        if not is_worker:
            close_orphan_runs(tracker, study)
            tracker.set_status(parent_run_id, "KILLED")
        kept = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        which = f"trial #{number} marked failed; " if number is not None else ""
        print(f"interrupted: {which}{kept} finished trials kept in {config.storage_url} and {config.mlflow_uri}; "
              f"run the same command to continue", file=sys.stderr, flush=True)
        return 130

    if code == 130:
        tracker.set_status(parent_run_id, "KILLED")
        kept = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        print(f"interrupted: {kept} finished trials kept in {config.storage_url} and {config.mlflow_uri}; "
              f"run the same command to continue", file=sys.stderr, flush=True)
        return 130
    if is_worker:
        return code

    ran_now = sum(1 for t in study.get_trials(deepcopy=False)
                  if t.state.is_finished() and t.number not in finished_before)
    summary = study_summary(study, config, ran_now, time.monotonic() - started)
    print_summary(summary, config)
    try:
        metrics = {"n_trials": summary["trials"], "n_complete": summary["states"]["complete"]}
        if summary["best"]:
            metrics["best_fid"] = summary["best"]["fid"]
        if summary["baseline_k1"]:
            metrics["baseline_k1_fid"] = summary["baseline_k1"]["fid"]
        if summary["improvement"]:
            metrics["improvement_fid"] = summary["improvement"]["delta_fid"]
        tracker.log_metrics(parent_run_id, metrics, step=summary["trials"])
        tracker.log_json(parent_run_id, "summary.json", summary)
        tracker.set_status(parent_run_id, "FINISHED" if code == 0 else "FAILED")
    except Exception as e:  # noqa: BLE001 - the study itself is saved; only the parent run's summary is missing
        _err(f"could not write the summary to MLflow: {e}")
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except UsageError as e:
        _err(str(e))
        return 2
    _quiet()
    from study.storage import StorageError, open_storage

    try:
        storage = open_storage(config.storage_url, config.heartbeat_interval)
    except StorageError as e:
        _err(str(e))
        return 2
    from bdense_core.data import DatasetError

    usage_errors: tuple[type[BaseException], ...] = (UsageError, DatasetError, FileNotFoundError)
    try:
        from bdense_core.fid import InceptionNotFound

        usage_errors += (InceptionNotFound,)
    except ImportError:
        pass
    try:
        return run_study(config, storage)
    except usage_errors as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:  # outside a trial (teacher training, start-up)
        print("interrupted before the trials started; nothing lost (the teacher resumes from its checkpoint)",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
