"""The typed study configuration: everything one command needs, resolved and checked.

``study/cli.py`` turns flags into an ``argparse.Namespace``; :func:`resolve` turns that into a frozen
:class:`StudyConfig` with no ``None`` left for a later module to guess, or raises :class:`UsageError` with one
line naming the fix. Presets (``bdense_core/presets.py``) hold the teacher, the distillation budget and the FID
sample counts; flags override single fields. The framework registry decides what a framework needs (K limits,
how the NFE is set, what every trial of a study shares).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bdense_core.distill import get_framework
from bdense_core.presets import LENGTHS, Preset, default_preset_name, get_preset
from bdense_core.schedule import BranchWeights

SAMPLERS = ("tpe", "gp", "cmaes", "random")
PRUNERS = ("none", "median", "hyperband")
PATHS = ("seed", "shared", "fresh")
OBJECTIVES = ("auto", "fid", "kid")
RUNS_DIR_ENV = "BDENSE_RUNS_DIR"
JOURNAL_NAME = "optuna-journal.log"
MAX_K = 32  # more branches than this is a typo, not an experiment (K must also divide the teacher's sub-steps)
MAX_SUBSTEPS = 240  # the lcm of the K choices sets the teacher's sub-steps per interval
MAX_SEED = 2**31 - 10_000  # seeds are offset (evaluation, banks) and must stay valid 32-bit seeds
KID_BELOW = 2000  # with fewer FID samples than this, the objective is KID (FID is strongly biased there)
CONFIRM_FIRST_SEED = 1000  # confirmation seeds start here, apart from the screen's


class UsageError(ValueError):
    """Bad input: printed as one line, exit status 2."""


@dataclass(frozen=True)
class StudyConfig:
    """One command's study, resolved. ``shared[length]`` is the framework config every trial of that length
    shares (SFD: the teacher's sub-steps S are the lcm of every K choice)."""

    preset: Preset
    framework: str
    nfe: int
    k_choices: tuple[int, ...]
    weights_mode: str
    a_range: tuple[float, float]
    b_range: tuple[float, float]
    w_range: tuple[float, float]
    sampler: str
    pruner: str
    seed: int
    seeds_per_trial: int
    n_trials: int
    timeout: float | None
    workers: int
    devices: tuple[str, ...]  # where the workers run, round-robin
    students_per_worker: int
    study_name: str
    storage_url: str
    mlflow_uri: str
    artifact_root: Path
    runs_dir: Path
    train_teacher: bool
    heartbeat_interval: int | None  # None: the study's own (30 s when it is created)
    length: str  # trial length of the search: "screen" or "full"
    shared: dict[str, Any]  # length -> the framework config every trial of that length shares
    paths: str  # "seed": the trial's seed sets its teacher paths; "shared": one bank for every trial; "fresh"
    fast: bool
    objective: str  # "fid" or "kid": the metric a trial's value is
    confirm_top: int = 0
    confirm_seeds: int = 3
    confirm_length: str = "full"
    ablation: str | None = None
    ablation_seeds: int = 3
    ablation_length: str | None = None  # the ablation trials' training length (None: the study's)
    ablation_nfe: tuple[int, ...] = (2, 3, 4, 5)  # the NFE values of the nfe grid
    argv: tuple[str, ...] = field(default=(), compare=False)

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def fw(self):
        return get_framework(self.framework)

    @property
    def device(self) -> str | None:
        return self.devices[0] if self.devices else None

    @property
    def iterations(self) -> int:
        return self.shared[self.length].iterations

    @property
    def cache_root(self) -> Path:
        """Teacher, bank and FID-statistics caches: ``$BDENSE_CACHE_DIR`` if set, else ``<runs-dir>/cache``."""
        env = os.environ.get("BDENSE_CACHE_DIR")
        return Path(env).expanduser().resolve() if env else self.runs_dir / "cache"

    @property
    def seeds(self) -> list[int]:
        """Training seeds of every search trial (the same list in all of them: paired comparisons)."""
        return [self.seed + j for j in range(self.seeds_per_trial)]

    @property
    def confirm_seed_list(self) -> list[int]:
        return [self.seed + CONFIRM_FIRST_SEED + j for j in range(self.confirm_seeds)]

    @property
    def search_k_choices(self) -> tuple[int, ...]:
        """K values the search draws from: never K = 1 (the K = 1 baseline covers it)."""
        return tuple(k for k in self.k_choices if k > 1)

    def trial_config(self, branches: int, weights: BranchWeights, seed: int, nfe: int | None = None,
                     length: str | None = None):
        """One trial's framework config (a designed grid may give a trial its own NFE or length)."""
        shared = self.shared[length or self.length]
        return self.fw.for_trial(shared, branches=branches, weights=weights, seed=seed, nfe=nfe)

    def settings(self, length: str | None = None) -> dict[str, Any]:
        """What every table states about a trial's training: length, batch, lr and the framework's own."""
        cfg = self.shared[length or self.length]
        out = dict(length=length or self.length, iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr)
        out.update(self.fw.settings(cfg))
        return out

    def describe(self) -> dict:
        """JSON-able settings for MLflow params and resolved configs (secrets masked)."""
        from study.secrets import mask_url

        return dict(
            preset=self.preset.name, framework=self.framework, nfe=self.nfe, k_choices=list(self.k_choices),
            weights_mode=self.weights_mode, a_range=list(self.a_range), b_range=list(self.b_range),
            w_range=list(self.w_range), sampler=self.sampler, pruner=self.pruner, seed=self.seed,
            seeds_per_trial=self.seeds_per_trial, fid_samples=self.preset.fid_samples,
            fid_reference=self.preset.fid_reference, objective=self.objective, paths=self.paths,
            bank_size=self.preset.bank_size, students_per_worker=self.students_per_worker, fast=self.fast,
            confirm_top=self.confirm_top, confirm_seeds=self.confirm_seeds, confirm_length=self.confirm_length,
            **self.settings(), study_name=self.study_name, storage=mask_url(self.storage_url),
            mlflow_uri=mask_url(self.mlflow_uri), artifact_root=str(self.artifact_root),
        )

    def compatibility(self) -> dict[str, Any]:
        """What a resumed study must share with the command that resumes it (else its trials are not comparable)."""
        return dict(
            preset=self.preset.name, framework=self.framework, nfe=self.nfe, weights_mode=self.weights_mode,
            k_choices=list(self.k_choices), fid_samples=self.preset.fid_samples, iterations=self.iterations,
            a_range=list(self.a_range), b_range=list(self.b_range), w_range=list(self.w_range),
            seeds_per_trial=self.seeds_per_trial, objective=self.objective, paths=self.paths, length=self.length,
            **{k: v for k, v in self.fw.settings(self.shared[self.length]).items() if k in ("distance", "teacher_fp32")},
        )


# -- resolution --------------------------------------------------------------------------------------------
def _with_teacher_file(preset: Preset, path: str) -> Preset:
    """``preset`` with the teacher in ``path`` (a file written by save_teacher) in place of its shipped one."""
    from bdense_core.teacher import TeacherFileError, load_teacher

    try:
        teacher = load_teacher(path, "cpu")
    except (FileNotFoundError, TeacherFileError) as e:
        raise UsageError(f"--teacher-file: {e}") from None
    if teacher.config.data != preset.teacher.data:
        raise UsageError(f"--teacher-file {path} was trained on other data than preset {preset.name}'s "
                         f"({teacher.config.data} vs {preset.teacher.data}); pass a teacher of the preset's data or "
                         f"another --preset")
    return replace(preset, teacher=teacher.config, teacher_file=str(Path(path).resolve()))


def _k_choices(tokens: list[str] | None, preset: Preset, framework: str) -> tuple[int, ...]:
    fw = get_framework(framework)
    if tokens is None:
        return tuple(sorted(set(fw.k_choices(tuple(preset.k_choices))) | {1}))
    values = []
    for tok in tokens:
        for part in str(tok).replace(",", " ").split():
            try:
                values.append(int(part))
            except ValueError:
                raise UsageError(f"--k takes whole numbers, got {part!r}") from None
    if not values:
        raise UsageError("--k needs at least one branch count")
    if min(values) < 1:
        raise UsageError(f"--k: every K choice must be >= 1, got {min(values)}")
    if max(values) > MAX_K:
        raise UsageError(f"--k: K = {max(values)} is too large (at most {MAX_K} branches)")
    if fw.max_branches is not None and max(values) > fw.max_branches:
        raise UsageError(f"--framework {framework} supports K = 1 to {fw.max_branches} only "
                         f"(K = 1 or 2), got --k {' '.join(map(str, values))}")
    return tuple(sorted(set(values) | {1}))  # K = 1 is the baseline of every study


def _range(name: str, values, positive: bool) -> tuple[float, float]:
    lo, hi = float(values[0]), float(values[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"{name} needs finite numbers, got {lo} {hi}")
    if lo > hi:
        raise UsageError(f"{name}: MIN must be <= MAX, got {lo:g} > {hi:g}")
    if positive and lo <= 0:
        raise UsageError(f"{name} is log-scaled: both ends must be > 0, got {lo:g} {hi:g}")
    return lo, hi


def _at_least(name: str, value, low: int) -> None:
    if value is not None and value < low:
        raise UsageError(f"{name} must be >= {low}, got {value}")


def _devices(text: str | None, device: str | None) -> tuple[str, ...]:
    """``--devices cuda:0,cuda:1`` (or ``--device X``) checked against what this machine has; default: every
    visible CUDA device, else the CPU."""
    import torch

    if text and device:
        raise UsageError("give --device or --devices, not both")
    wanted = [d.strip() for d in (text or device or "").split(",") if d.strip()]
    if not wanted:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return tuple(f"cuda:{i}" for i in range(n)) or ("cpu",)
    out = []
    for d in wanted:
        try:
            dev = torch.device(d)
        except RuntimeError:
            raise UsageError(f"unknown device {d!r}; use cpu, cuda or cuda:N") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"device {d!r} asked for, but CUDA is not available here; use --device cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise UsageError(f"device {d!r} asked for, but this machine has {torch.cuda.device_count()} "
                                 f"CUDA device(s)")
            out.append(f"cuda:{dev.index or 0}")
        elif dev.type == "cpu":
            out.append("cpu")
        else:
            raise UsageError(f"device {d!r} is not supported; use cpu or cuda:N")
    return tuple(out)


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts, seed and timeout within their ranges (one :class:`UsageError` naming the flag)."""
    for name, value, low in [("--n-trials", args.n_trials, 0), ("--workers", args.workers, 1),
                             ("--seeds-per-trial", args.seeds_per_trial, 1), ("--ablation-seeds", args.ablation_seeds, 1),
                             ("--heartbeat-interval", args.heartbeat_interval, 1),
                             ("--students-per-worker", args.students_per_worker, 1),
                             ("--confirm-top", args.confirm_top, 0), ("--confirm-seeds", args.confirm_seeds, 1),
                             ("--fid-samples", args.fid_samples, 2), ("--iterations", args.iterations, 1),
                             ("--bank-size", args.bank_size, 0)]:
        _at_least(name, value, low)
    if not 0 <= args.seed <= MAX_SEED:
        raise UsageError(f"--seed must be between 0 and {MAX_SEED}, got {args.seed}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")


def resolve(args: argparse.Namespace, argv: tuple[str, ...] = ()) -> StudyConfig:
    """Check the parsed flags and resolve them into a :class:`StudyConfig` (raises :class:`UsageError`)."""
    _check_numbers(args)
    devices = _devices(args.devices, args.device)
    try:
        preset = get_preset(args.preset or default_preset_name(devices[0].startswith("cuda")))
    except ValueError as e:
        raise UsageError(str(e)) from None
    n_trials = preset.n_trials if args.n_trials is None else args.n_trials
    if n_trials == 0 and not args.confirm_top and not args.ablation:
        raise UsageError("--n-trials must be >= 1 (0 only with --confirm-top or --ablation)")
    framework = args.framework
    fw = get_framework(framework)
    if args.distance is not None and not hasattr(preset.config(framework), "distance"):
        raise UsageError(f"--distance applies to --framework pd only (not {framework})")
    if args.teacher_fp32 and not hasattr(preset.config(framework), "teacher_bf16"):
        raise UsageError(f"--teacher-fp32 applies to --framework sfd only (not {framework})")
    k_choices = _k_choices(args.k, preset, framework)
    if len(k_choices) < 2 and not args.ablation:
        raise UsageError("the search needs a K > 1 among --k (K = 1 is the baseline every study runs)")
    a_range = _range("--a-range", args.a_range, positive=False)
    b_range = _range("--b-range", args.b_range, positive=True)
    w_range = _range("--w-range", args.w_range, positive=True)

    if args.teacher_file is not None:
        preset = _with_teacher_file(preset, args.teacher_file)
    if args.fid_samples is not None:
        preset = replace(preset, fid_samples=args.fid_samples)
    if args.bank_size is not None:
        preset = replace(preset, bank_size=args.bank_size)

    def shared_at(length: str):
        p = preset.at_length(length)
        if args.iterations is not None and length == args.length:
            p = p.with_configs(lambda c: replace(c, iterations=args.iterations))
        p = p.with_configs(lambda c: replace(c, fast=args.fast) if hasattr(c, "fast") else c)
        if args.teacher_fp32:
            p = p.with_configs(lambda c: replace(c, teacher_bf16=False) if hasattr(c, "teacher_bf16") else c)
        if args.distance is not None:
            p = p.with_configs(lambda c: replace(c, distance=args.distance) if hasattr(c, "distance") else c)
        try:
            cfg = fw.for_study(p.config(framework), k_choices, args.nfe)
        except ValueError as e:
            reason = str(e)
            raise UsageError(f"--nfe {args.nfe}: {reason}" if args.nfe is not None and "NFE" in reason else reason) from None
        s = fw.settings(cfg).get("teacher_substeps")
        if s is not None and s > MAX_SUBSTEPS:
            raise UsageError(f"--k {' '.join(map(str, k_choices))} needs {s} teacher sub-steps per interval (their "
                             f"lcm); choose K values with a smaller lcm (at most {MAX_SUBSTEPS})")
        return cfg

    lengths = ({args.length} | ({args.confirm_length} if args.confirm_top else set())
               | ({args.ablation_length} if args.ablation and args.ablation_length else set()))
    shared = {length: shared_at(length) for length in sorted(lengths)}
    nfe = shared[args.length].nfe

    if any(n < 1 for n in args.ablation_nfe):
        raise UsageError(f"--ablation-nfe {' '.join(map(str, args.ablation_nfe))}: every NFE must be >= 1")
    if args.ablation == "nfe" and not fw.nfe_per_trial:
        raise UsageError(f"--ablation nfe compares NFE 2-5, which --framework {framework} cannot (its NFE is fixed per study)")
    if args.paths != "fresh" and not fw.uses_bank:
        paths = "fresh"  # frameworks without teacher paths (progressive distillation) train on data
    else:
        paths = args.paths
    if args.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UsageError("--sampler cmaes needs the 'cmaes' package (pip install cmaes)") from None

    objective = args.objective
    if objective == "auto":
        objective = "kid" if preset.fid_samples < KID_BELOW else "fid"

    runs_dir = (Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_dir()).resolve()
    # a setting a resumed study must share (StudyConfig.compatibility) and that is not the preset's default names
    # its own study, so `--distance state` or `--teacher-fp32` beside the default study needs no --study-name
    variant = "".join(f"-{v}" for v in (
        args.distance if args.distance not in (None, "x") else None,
        "teacher-fp32" if args.teacher_fp32 else None,
        None if args.length == "screen" else args.length) if v)
    study_name = args.study_name or (
        f"bdense-{preset.name}-{framework}-nfe{nfe}-{args.weights}-k{'-'.join(map(str, k_choices))}{variant}")
    if not study_name.strip():
        raise UsageError("--study-name must not be empty")
    students = args.students_per_worker or preset.students_per_worker

    return StudyConfig(
        preset=preset, framework=framework, nfe=nfe, k_choices=k_choices, weights_mode=args.weights,
        a_range=a_range, b_range=b_range, w_range=w_range, sampler=args.sampler, pruner=args.pruner,
        seed=args.seed, seeds_per_trial=args.seeds_per_trial, n_trials=n_trials, timeout=args.timeout,
        workers=max(1, args.workers), devices=devices, students_per_worker=students, study_name=study_name,
        storage_url=args.storage or f"journal:{runs_dir / JOURNAL_NAME}",
        mlflow_uri=args.mlflow_uri or f"sqlite:///{runs_dir / 'mlflow.db'}",
        artifact_root=runs_dir / "mlartifacts", runs_dir=runs_dir, heartbeat_interval=args.heartbeat_interval,
        train_teacher=args.train_teacher,
        length=args.length, shared=shared, paths=paths, fast=args.fast, objective=objective,
        confirm_top=args.confirm_top, confirm_seeds=args.confirm_seeds, confirm_length=args.confirm_length,
        ablation=args.ablation, ablation_seeds=args.ablation_seeds, ablation_length=args.ablation_length,
        ablation_nfe=tuple(sorted(set(args.ablation_nfe))),
        argv=tuple(argv),
    )


__all__ = ["LENGTHS", "StudyConfig", "UsageError", "resolve"]
