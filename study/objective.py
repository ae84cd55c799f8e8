"""One trial: draw K and the branch weights, distil with bdense_core for every seed, score FID, record.

``objective(trial, ctx)`` is a plain function of the trial (``make_objective(ctx)`` binds the context).
The context holds what all trials of one process share: the teacher, the trajectory bank, the FID
evaluator, the data (PD) and the MLflow tracker. The objective value is the mean FID over the seeds
(minimised). During training the endpoint error (SFD: ``endpoint_l1``; PD: the endpoint branch's loss) is
reported to Optuna every few iterations so that a pruner can stop hopeless trials; baselines are never
pruned. A NaN/inf loss prunes the trial with ``fail_reason``; Ctrl-C fails it; either way the MLflow run
is closed with the matching status.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from bdense_core.distill import DivergenceError, distill
from bdense_core.evaluate import evaluate
from bdense_core.runtime import to_jsonable

from . import space
from .cli import StudyConfig
from .tracking import Tracker, TrialRun, plot_branch_weights, save_sample_grid

EVAL_SEED = 2024  # sampling seed of the FID images of seed index j: EVAL_SEED + j, the same in every trial
GRID_SEED = 7
GRID_SIZE = 64


@dataclass
class StudyContext:
    """What the trials of one process share."""

    config: StudyConfig
    teacher: Any  # bdense_core.teacher.Teacher
    evaluator: Any  # bdense_core.fid.FIDEvaluator
    tracker: Tracker
    parent_run_id: str
    data: Any = None  # ImageSet, PD only
    banks: Callable[[int], Any] | None = None  # NFE -> TrajectoryBank or None (SFD with bank_size > 0)
    on_step: Callable[[int, int, int, dict], None] | None = None  # (trial number, step, total steps, record)
    current_trial: int | None = field(default=None, init=False)  # the trial this process is running


class _StepHook:
    """The distillation callback: buffers per-step metrics for MLflow and reports to Optuna's pruner."""

    def __init__(self, trial: optuna.Trial, run: TrialRun, ctx: StudyContext, branches: int, offset: int,
                 total: int, may_prune: bool):
        self.trial, self.run, self.ctx = trial, run, ctx
        self.offset, self.total, self.may_prune = offset, total, may_prune
        self.key = ctx.config.fw.prune_metric
        iterations = ctx.config.iterations
        self.report_every = max(1, iterations // 10)
        self.window: list[float] = []

    def __call__(self, rec: dict[str, float]) -> None:
        step = self.offset + int(rec["step"])
        self.run.log_step(rec, step)
        if self.ctx.on_step is not None:
            self.ctx.on_step(self.trial.number, step, self.total, rec)
        value = rec.get(self.key, rec.get("loss"))
        if value is not None:
            self.window.append(float(value))
        if int(rec["step"]) % self.report_every == 0 and self.window:
            mean = sum(self.window) / len(self.window)
            self.window.clear()
            self.trial.report(mean, step)
            if self.may_prune and self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {self.key} {mean:.4g} behind the other trials")


def _trial_params_for_mlflow(trial: optuna.Trial, point: space.TrialPoint, cfg: StudyConfig, ctx: StudyContext,
                             role: str, nfe: int, seeds: list[int]) -> dict:
    base = cfg.base_distill_config
    fa, fb = point.fitted_ab
    params = dict(trial.params)
    params.update(
        weights_mode=cfg.weights_mode, weights=[round(w, 6) for w in point.weight_values()], fitted_a=fa,
        fitted_b=fb, framework=cfg.framework, nfe=nfe, seeds=seeds, preset=cfg.preset.name,
        teacher_key=ctx.teacher.key, role=role, iterations=base.iterations, batch_size=base.batch_size, lr=base.lr,
        fid_samples=cfg.preset.fid_samples, fid_reference=cfg.preset.fid_reference, optuna_trial_number=trial.number,
        study_name=cfg.study_name,
    )
    params.update(cfg.fw.settings(cfg.shared))
    return params


def _fail(trial: optuna.Trial, run: TrialRun | None, reason: str, status: str, tb: str | None = None) -> None:
    """Record why a trial ended early in both stores; never raises (the original error matters more)."""
    try:
        trial.set_user_attr("fail_reason", reason[:2000])
    except Exception:  # noqa: BLE001
        pass
    if run is None:
        return
    try:
        run.tracker.set_tags(run.run_id, {"fail_reason": reason[:4000]})
        if tb:
            run.tracker.log_json(run.run_id, "traceback.json", {"traceback": tb})
        run.finish(status)
    except Exception:  # noqa: BLE001
        pass


def objective(trial: optuna.Trial, ctx: StudyContext) -> float:
    cfg = ctx.config
    point = space.suggest(trial, cfg)
    role = trial.user_attrs.get("role", space.SEARCH)
    fa, fb = point.fitted_ab
    ctx.current_trial = trial.number
    # an ablation grid may enqueue a trial with its own NFE and seeds (analysis/ablation.py)
    nfe = int(trial.user_attrs.get("nfe", cfg.nfe))
    seeds = [int(s) for s in trial.user_attrs.get("seeds", cfg.seeds)]
    bank = ctx.banks(nfe) if ctx.banks is not None else None  # one bank per NFE grid, shared by the trials
    static = dict(
        role=role, nfe=nfe, framework=cfg.framework, weights_mode=cfg.weights_mode, fitted_a=fa, fitted_b=fb,
        preset=cfg.preset.name, teacher_key=ctx.teacher.key, seeds=seeds, iterations=cfg.iterations,
        teacher_paths="bank" if bank is not None else "fresh",
        worker_pid=os.getpid(), hostname=socket.gethostname(),
    )
    for key, value in static.items():
        trial.set_user_attr(key, value)

    run: TrialRun | None = None
    started = time.perf_counter()
    try:
        label = f"K={point.branches} " + (
            f"a={point.weights.a:.3g} b={point.weights.b:.3g}" if cfg.weights_mode == "exp"
            else "w=" + ",".join(f"{w:.2g}" for w in point.weight_values())
        )
        run = ctx.tracker.start_trial_run(
            cfg.study_name, ctx.parent_run_id, trial.number, f"trial-{trial.number:04d} {label}",
            tags={"role": role, "teacher_key": ctx.teacher.key},
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)
        ctx.tracker.log_params(run.run_id, _trial_params_for_mlflow(trial, point, cfg, ctx, role, nfe, seeds))

        per_seed: list[dict[str, float]] = []
        total_steps = cfg.iterations * len(seeds)
        with tempfile.TemporaryDirectory(prefix="bdense-trial-") as tmp:
            tmp = Path(tmp)
            for j, seed in enumerate(seeds):
                dcfg = cfg.distill_config(point.branches, point.weights, seed, nfe)
                hook = _StepHook(trial, run, ctx, point.branches, j * cfg.iterations, total_steps,
                                 may_prune=role == space.SEARCH)
                result = distill(ctx.teacher, dcfg, data=ctx.data, bank=bank, callback=hook)
                run.flush()
                scores = evaluate(result, ctx.evaluator, cfg.preset.fid_samples, seed=EVAL_SEED + j,
                                  batch_size=cfg.preset.eval_batch)
                if not math.isfinite(scores["fid"]):
                    raise DivergenceError(f"FID of seed {seed} is {scores['fid']} (the samples are broken)")
                row = dict(seed=seed, fid=float(scores["fid"]), kid=float(scores["kid"]),
                           samples_per_s=float(scores["samples_per_s"]), train_time_s=result.wall_time_s,
                           train_images_per_s=result.images_per_s)
                per_seed.append(row)
                ctx.tracker.log_metrics(run.run_id, {f"fid_seed_{seed}": row["fid"], f"kid_seed_{seed}": row["kid"]})
                grid = save_sample_grid(result.sample(GRID_SIZE, seed=GRID_SEED, batch_size=GRID_SIZE),
                                        tmp / f"samples_seed{seed}.png")
                ctx.tracker.log_artifact(run.run_id, grid)

            fids = [r["fid"] for r in per_seed]
            kids = [r["kid"] for r in per_seed]
            fid = statistics.fmean(fids)
            fid_std = statistics.stdev(fids) if len(fids) > 1 else float("nan")
            wall = time.perf_counter() - started
            final = dict(
                fid=fid, kid=statistics.fmean(kids), fid_seeds=fids, kid_seeds=kids, fid_std=fid_std,
                wall_time_s=wall, train_time_s=sum(r["train_time_s"] for r in per_seed),
                samples_per_s=statistics.fmean(r["samples_per_s"] for r in per_seed),
                train_images_per_s=statistics.fmean(r["train_images_per_s"] for r in per_seed),
            )
            for key, value in final.items():
                trial.set_user_attr(key, value)
            ctx.tracker.log_metrics(run.run_id, {k: v for k, v in final.items() if not isinstance(v, list)})

            title = f"trial {trial.number} ({role}): K={point.branches}, fitted a={fa:.3g}, b={fb:.3g}"
            plot = plot_branch_weights(point.weight_values(), (fa, fb), cfg.weights_mode, title,
                                       tmp / "branch_weights.png")
            ctx.tracker.log_artifact(run.run_id, plot)
            resolved = dict(
                trial=dict(number=trial.number, params=trial.params, role=role, weights=point.weight_values(),
                           fitted_a=fa, fitted_b=fb),
                study=cfg.describe(), teacher_key=ctx.teacher.key, teacher=to_jsonable(ctx.teacher.config),
                distill=[to_jsonable(cfg.distill_config(point.branches, point.weights, s, nfe)) for s in seeds],
                results=per_seed,
            )
            ctx.tracker.log_json(run.run_id, "config.json", resolved)
        run.finish("FINISHED")
        return fid
    except optuna.TrialPruned as e:
        _fail(trial, run, str(e) or "pruned", "KILLED")
        raise
    except DivergenceError as e:
        _fail(trial, run, f"diverged: {e}", "FAILED")
        raise optuna.TrialPruned(f"diverged: {e}") from None
    except KeyboardInterrupt:
        _fail(trial, run, "interrupted (Ctrl-C)", "KILLED")
        raise
    except Exception as e:
        _fail(trial, run, f"{type(e).__name__}: {e}", "FAILED", traceback.format_exc())
        raise
    finally:
        ctx.current_trial = None


def make_objective(ctx: StudyContext) -> Callable[[optuna.Trial], float]:
    def bound(trial: optuna.Trial) -> float:
        return objective(trial, ctx)

    return bound
