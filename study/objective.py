"""The objective of the trials one process runs together: suggest, distil, evaluate, record.

Like optuna-examples' ``pytorch_simple.py``, but for N trials at once (Optuna's ask/tell): each trial suggests
its K and weights, its students (one per training seed) train together as one batched model where the
framework can (``Framework.train_many``), each student is scored, and each trial is recorded in both stores.
The MLflow bookkeeping lives in ``study/tracking.py``; the names in ``study/contract.py``.

A trial's value is the mean of its seeds' objective (FID, or KID for small sample counts). During training the
framework's pruning metric is reported to Optuna by the trial's first seed; baselines, designed grids and
confirmations are never pruned. A NaN loss prunes the trial with ``fail_reason``; an error fails it (with the
traceback as an artifact); either way its MLflow run is closed with the matching status.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from bdense_core.distill import DivergenceError
from bdense_core.evaluate import evaluate

from . import contract as c
from . import space
from .config import StudyConfig
from .tracking import Tracker, TrialRun

EVAL_SEED = 1_000_003  # the FID images of training seed s are drawn with seed EVAL_SEED + s
GRID_SEED = 7
GRID_SIZE = 64
OWNER = "bdense:owner"  # system attribute: the process that runs a trial (host, pid, start time)


@dataclass
class Context:
    """What the trials of one process share."""

    config: StudyConfig
    teacher: Any  # bdense_core.teacher.Teacher
    evaluator: Any  # bdense_core.fid.FIDEvaluator
    tracker: Tracker
    parent_run_id: str
    paths: Callable[[int, str, int], Any]  # (nfe, length, seed) -> TrajectoryBank or None
    data: Any = None  # ImageSet, frameworks that train on data
    on_step: Callable[[int, int, int, dict], None] | None = None  # (trial number, step, total, record)


@dataclass
class Plan:
    """One trial's resolved setting: its point, seeds, NFE, length and role."""

    trial: optuna.Trial
    point: space.TrialPoint
    role: str
    seeds: list[int]
    nfe: int
    length: str
    run: TrialRun | None = None
    scores: list[dict[str, float]] = field(default_factory=list)
    rounds: dict[int, dict[int, float]] = field(default_factory=dict)  # progressive distillation: round -> seed -> FID
    last_round: dict[int, tuple[int, dict]] = field(default_factory=dict)  # PD: seed -> (its latest round, its scores)
    error: BaseException | None = None
    tb: str | None = None
    started: float = field(default_factory=time.perf_counter)
    train_s: float = 0.0  # the training loops this trial's students ran in, each counted once (students train together)
    distil_s: float = 0.0  # the framework calls those loops ran in: set-up, compiling and handing back included
    eval_s: float = 0.0  # scoring its students: samples, FID and KID, the sample grid

    @property
    def may_prune(self) -> bool:
        return self.role == c.ROLE_SEARCH


def plan(trial: optuna.Trial, ctx: Context) -> Plan:
    """Suggest: the trial's point, and the seeds, NFE and length a designed grid may have given it."""
    cfg = ctx.config
    point = space.suggest(trial, cfg)
    attrs = trial.user_attrs
    return Plan(trial, point, attrs.get(c.ROLE, c.ROLE_SEARCH), [int(s) for s in attrs.get(c.SEEDS, cfg.seeds)],
                int(attrs.get(c.NFE, cfg.nfe)), attrs.get(c.FIDELITY, cfg.length))


class _StepHook:
    """A student's per-iteration callback: MLflow step metrics, the live line, and (first seed) the pruner."""

    def __init__(self, p: Plan, j: int, ctx: Context, iterations: int):
        self.p, self.j, self.ctx = p, j, ctx
        self.offset, self.total = j * iterations, iterations * len(p.seeds)
        self.report_every = max(1, iterations // 10)
        self.key = ctx.config.fw.prune_metric
        self.window: list[float] = []

    def __call__(self, rec: dict[str, float]) -> None:
        p = self.p
        if p.error is not None:  # another seed of this trial was pruned or failed: stop this one too
            raise p.error
        step = self.offset + int(rec["step"])
        p.run.log_step(rec, step)
        if self.ctx.on_step is not None:
            self.ctx.on_step(p.trial.number, step, self.total, rec)
        if self.j != 0:
            return
        value = rec.get(self.key, rec.get("loss"))
        if value is not None:
            self.window.append(float(value))
        if int(rec["step"]) % self.report_every == 0 and self.window:
            mean = sum(self.window) / len(self.window)
            self.window.clear()
            p.trial.report(mean, step)
            if p.may_prune and p.trial.should_prune():
                p.error = optuna.TrialPruned(f"pruned at step {step}: {self.key} {mean:.4g} behind the other trials")
                raise p.error


    def on_round(self, round_index: int, student_steps: int, result) -> None:
        """Progressive distillation: FID (and KID) of the frozen student after each round, in both stores."""
        seed = self.p.seeds[self.j]
        scores = evaluate(result, self.ctx.evaluator, self.ctx.config.preset.fid_samples, seed=EVAL_SEED + seed,
                          batch_size=self.ctx.config.preset.eval_batch)
        self.p.rounds.setdefault(round_index, {})[seed] = float(scores["fid"])
        self.p.last_round[seed] = (round_index, scores)
        self.p.run.log_round(seed, round_index, student_steps, float(scores["fid"]), float(scores["kid"]))


def _record_start(p: Plan, ctx: Context) -> None:
    """Both stores learn of the trial before it trains: user attributes, and an MLflow run with its params."""
    cfg, trial = ctx.config, p.trial
    fa, fb = p.point.fitted_ab
    settings = cfg.settings(p.length)
    attrs = {
        c.ROLE: p.role, c.FIDELITY: p.length, c.NFE: p.nfe, c.SEEDS: p.seeds, c.FRAMEWORK: cfg.framework,
        c.WEIGHTS_MODE: cfg.weights_mode, c.FITTED_A: fa, c.FITTED_B: fb, c.PRESET: cfg.preset.name,
        c.TEACHER_KEY: ctx.teacher.key, c.OBJECTIVE: cfg.objective, c.TEACHER_PATHS: teacher_paths_label(cfg),
        **settings,
    }
    if p.point.branches == 1:
        attrs[c.PARAM_K] = 1
    for key, value in attrs.items():
        if trial.user_attrs.get(key) != value:
            trial.set_user_attr(key, value)
    params = dict(trial.params, K=p.point.branches, weights=[round(w, 6) for w in p.point.weight_values()],
                  a=p.point.weights.a if cfg.weights_mode == "exp" else fa, b=p.point.weights.b if cfg.weights_mode == "exp" else fb,
                  **{k: v for k, v in attrs.items() if k not in (c.PARAM_K,)},
                  fid_samples=cfg.preset.fid_samples, fid_reference=cfg.preset.fid_reference,
                  optuna_trial_number=trial.number, study_name=cfg.study_name)
    p.run = ctx.tracker.start_trial(cfg.study_name, ctx.parent_run_id, trial.number, p.point, p.role,
                                    params=params, teacher_key=ctx.teacher.key)
    trial.set_user_attr(c.MLFLOW_RUN_ID, p.run.run_id)


def teacher_paths_label(cfg: StudyConfig) -> str:
    """How a study's SFD students get their teacher paths, as the tables name it."""
    if not cfg.fw.uses_bank:
        return "data"
    label = {"seed": "seed bank", "shared": "shared bank", "fresh": "fresh"}[cfg.paths]
    return label if getattr(cfg.shared[cfg.length], "teacher_bf16", True) else f"{label}, teacher in fp32"


def distil(plans: list[Plan], ctx: Context) -> None:
    """Train every seed of every planned trial; students that can train together do so in one batched call."""
    cfg, fw = ctx.config, ctx.config.fw
    students = [(p, j, seed) for p in plans for j, seed in enumerate(p.seeds) if p.error is None]
    if hasattr(ctx.paths, "prefetch"):
        ctx.paths.prefetch([(p.nfe, p.length, seed) for p, _, seed in students])
    groups: dict[Any, list] = {}
    for p, j, seed in students:
        dcfg = cfg.trial_config(p.point.branches, p.point.weights, seed, p.nfe, p.length)
        key = fw.batch_key(dcfg)
        groups.setdefault(key if key is not None else object(), []).append((p, j, dcfg, ctx.paths(p.nfe, p.length, seed)))
    for members in groups.values():
        configs, banks = [m[2] for m in members], [m[3] for m in members]
        hooks = [_StepHook(p, j, ctx, dcfg.iterations) for p, j, dcfg, _ in members]
        t0 = time.perf_counter()
        try:
            results = fw.train_many(ctx.teacher, configs, data=ctx.data, bank=banks, callbacks=hooks)
        except Exception as e:  # noqa: BLE001 - the group's trials fail with this error; other groups go on
            # (session 17: torch's CUDA-graph trees raised in a group, the worker's loop ended, and its trials
            # read "the command ended before this trial could run"); repeated failures stop the loop as any do
            results = [e] * len(members)
        call_s = time.perf_counter() - t0
        loop_s: dict[int, float] = {}  # per trial: its students' longest training loop in this call
        for (p, _, _, _), res in zip(members, results):
            loop_s[id(p)] = max(loop_s.get(id(p), 0.0), getattr(res, "wall_time_s", 0.0))
        for p in {id(m[0]): m[0] for m in members}.values():
            p.distil_s += call_s
            p.train_s += loop_s[id(p)]
        for (p, j, dcfg, _), res in zip(members, results):
            p.run.flush()
            if isinstance(res, BaseException):
                if p.error is None:
                    p.error = res
                    p.tb = "".join(traceback.format_exception(res)) if not isinstance(res, optuna.TrialPruned) else None
                continue
            if p.error is None:
                t1 = time.perf_counter()
                try:
                    p.scores.append(_evaluate(p, j, res, ctx))
                except Exception as e:  # noqa: BLE001 - this trial fails (or is pruned); the others go on
                    p.error, p.tb = e, traceback.format_exc()
                p.eval_s += time.perf_counter() - t1


def _evaluate(p: Plan, j: int, result, ctx: Context) -> dict[str, float]:
    """Score one student (its seed's own sampling noise) and log its sample grid.

    A PD student was scored already, as its last round's (the same weights, steps and sampling seed)."""
    cfg, seed = ctx.config, p.seeds[j]
    rnd, scores = p.last_round.pop(seed, (None, None))
    if scores is None or rnd != result.config.rounds:
        scores = evaluate(result, ctx.evaluator, cfg.preset.fid_samples, seed=EVAL_SEED + seed,
                          batch_size=cfg.preset.eval_batch)
    if not math.isfinite(scores["fid"]):
        raise DivergenceError(f"FID of seed {seed} is {scores['fid']} (the samples are broken)")
    row = dict(seed=seed, fid=float(scores["fid"]), kid=float(scores["kid"]),
               samples_per_s=float(scores["samples_per_s"]), train_time_s=result.wall_time_s,
               train_images_per_s=result.images_per_s, config=result.config)
    p.run.log_seed(seed, row, result.sample(GRID_SIZE, seed=GRID_SEED, batch_size=GRID_SIZE))
    return row


def _finish(p: Plan, ctx: Context) -> float:
    """Record a trained trial in both stores; returns its value."""
    cfg, trial = ctx.config, p.trial
    per = p.scores
    fids, kids = [r["fid"] for r in per], [r["kid"] for r in per]
    final = {
        c.FID: statistics.fmean(fids), c.KID: statistics.fmean(kids), c.FID_SEEDS: fids, c.KID_SEEDS: kids,
        c.FID_STD: statistics.stdev(fids) if len(fids) > 1 else float("nan"),
        c.WALL_TIME_S: time.perf_counter() - p.started, "train_time_s": p.train_s, "distil_time_s": p.distil_s,
        "eval_time_s": p.eval_s,
        "samples_per_s": statistics.fmean(r["samples_per_s"] for r in per),
        "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in per),
    }
    if p.rounds:  # progressive distillation: FID after round 1, 2, ... (mean over the trial's seeds), and each seed's
        rounds = sorted(p.rounds)
        final[c.FID_ROUNDS] = [statistics.fmean(p.rounds[r].values()) for r in rounds]
        final[c.FID_ROUNDS_SEEDS] = [[p.rounds[r].get(s) for r in rounds] for s in p.seeds]
    for key, value in final.items():
        trial.set_user_attr(key, value)
    value = final[c.FID] if cfg.objective == "fid" else final[c.KID]
    p.run.finish_trial(final, p.point, cfg, ctx.teacher, per, trial)
    return value


@dataclass
class Outcome:
    """How a trial ended: ``state`` is an Optuna TrialState, ``value`` its objective when complete."""

    trial: optuna.Trial
    state: optuna.trial.TrialState
    value: float | None = None
    reason: str | None = None


def _outcome(p: Plan, ctx: Context) -> Outcome:
    from optuna.trial import TrialState

    err = p.error
    if err is None:
        try:
            return Outcome(p.trial, TrialState.COMPLETE, _finish(p, ctx))
        except Exception as e:  # noqa: BLE001 - recording failed: the trial fails, the study goes on
            err, p.tb = e, traceback.format_exc()
    if isinstance(err, optuna.TrialPruned):
        reason, status, state = str(err) or "pruned", "KILLED", TrialState.PRUNED
    elif isinstance(err, DivergenceError):
        reason, status, state = f"diverged: {err}", "FAILED", TrialState.PRUNED
    else:
        reason, status, state = f"{type(err).__name__}: {err}", "FAILED", TrialState.FAIL
    _fail_record(p, reason, status)
    return Outcome(p.trial, state, None, reason)


def _fail_record(p: Plan, reason: str, status: str) -> None:
    """Why a trial ended early, in both stores; never raises (the original error matters more)."""
    try:
        p.trial.set_user_attr(c.FAIL_REASON, reason[:2000])
    except Exception:  # noqa: BLE001 - the trial was finished by another process meanwhile
        pass
    if p.run is not None:
        p.run.fail(reason, status, p.tb)


def run_trials(trials: list[optuna.Trial], ctx: Context) -> list[Outcome]:
    """The objective of ``trials``, trained together: suggest, distil, evaluate, record."""
    plans = []
    for trial in trials:
        p = plan(trial, ctx)  # suggest
        plans.append(p)
        try:
            _record_start(p, ctx)
        except Exception as e:  # noqa: BLE001 - this trial fails; the others go on
            p.error, p.tb = e, traceback.format_exc()
    try:
        distil(plans, ctx)  # distil + evaluate
    except KeyboardInterrupt:
        for p in plans:
            _fail_record(p, "interrupted", "KILLED")
        raise
    return [_outcome(p, ctx) for p in plans]  # record


def interrupted(trials: list[optuna.Trial], reason: str) -> None:
    """Trials stopped from outside (Ctrl-C, SIGTERM): note why (their MLflow runs were closed already)."""
    for t in trials:
        try:
            t.set_user_attr(c.FAIL_REASON, reason)
        except Exception:  # noqa: BLE001
            pass
