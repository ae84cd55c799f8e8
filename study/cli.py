"""Command-line flags of ``study/run.py``, checked and resolved into one typed :class:`StudyConfig`.

Presets (``bdense_core.presets``) hold the teacher, the distillation budget and the FID sample counts; the
flags here override single fields of them with ``dataclasses.replace``. Every bad input ends in
:class:`UsageError`, which ``run.main`` prints as one line before exiting with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bdense_core.distill import FRAMEWORKS, get_framework
from bdense_core.presets import PRESETS, Preset, default_preset_name, get_preset
from bdense_core.schedule import WEIGHT_MODES
SAMPLERS = ("tpe", "gp", "cmaes", "random")
PRUNERS = ("none", "median", "hyperband")
RUNS_DIR_ENV = "BDENSE_RUNS_DIR"
JOURNAL_NAME = "optuna-journal.log"


class UsageError(ValueError):
    """Bad input: printed as one line, exit status 2."""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the epilog's line breaks; appends "(default: X)" unless the help already says it."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32, width=110)

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (status 2), like every other input error here."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class StudyConfig:
    """Everything one invocation needs, resolved: no None left that a later module has to guess."""

    preset: Preset  # with --fid-samples / --iterations already applied
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
    device: str | None
    study_name: str
    storage_url: str
    mlflow_uri: str
    artifact_root: Path
    runs_dir: Path
    heartbeat_interval: int
    shared: Any  # the framework's config that every trial shares (SFD: S is the lcm of every K choice)
    ablation: str | None = None  # a designed grid (analysis/ablation.py) to enqueue before the trials
    ablation_seeds: int = 3
    worker_index: int | None = None  # set in processes started by --workers
    argv: tuple[str, ...] = field(default=(), compare=False)

    @property
    def cache_root(self) -> Path:
        """Teacher and FID-statistics caches: ``$BDENSE_CACHE_DIR`` if set (shared by run folders), else runs/cache."""
        env = os.environ.get("BDENSE_CACHE_DIR")
        return Path(env).expanduser().resolve() if env else self.runs_dir / "cache"

    @property
    def seeds(self) -> list[int]:
        """Training seeds of every trial: the same list in all trials (paired comparisons)."""
        return [self.seed + j for j in range(self.seeds_per_trial)]

    @property
    def iterations(self) -> int:
        return self.shared.iterations

    @property
    def fw(self):
        return get_framework(self.framework)

    @property
    def base_distill_config(self):
        return self.shared

    @property
    def teacher_substeps(self) -> int | None:
        return self.fw.settings(self.shared).get("teacher_substeps")

    def distill_config(self, branches: int, weights, seed: int, nfe: int | None = None):
        """The framework's config for one (K, weights, seed); what the study shares is fixed, and so is the NFE,
        except for trials that an ablation grid enqueued with their own ``nfe``."""
        return self.fw.for_trial(self.shared, branches=branches, weights=weights, seed=seed, nfe=nfe)

    def describe(self) -> dict:
        """A JSON-able summary of the settings (for MLflow params and the resolved config)."""
        return dict(
            preset=self.preset.name, framework=self.framework, nfe=self.nfe, k_choices=list(self.k_choices),
            weights_mode=self.weights_mode, a_range=list(self.a_range), b_range=list(self.b_range),
            w_range=list(self.w_range), sampler=self.sampler, pruner=self.pruner, seed=self.seed,
            seeds_per_trial=self.seeds_per_trial, fid_samples=self.preset.fid_samples,
            fid_reference=self.preset.fid_reference, iterations=self.iterations, bank_size=self.preset.bank_size,
            teacher_substeps=self.teacher_substeps,
            study_name=self.study_name, storage=self.storage_url, mlflow_uri=self.mlflow_uri,
            artifact_root=str(self.artifact_root),
        )


def _preset_epilog() -> str:
    lines = ["presets (bdense_core/presets.py):"]
    for p in PRESETS.values():
        lines.append(f"  {p.name:<12} {p.description}")
    lines += [
        "",
        "stores (default under --runs-dir): Optuna journal optuna-journal.log, MLflow sqlite mlflow.db with",
        "artifacts in mlartifacts/, teacher and FID caches in cache/ ($BDENSE_CACHE_DIR overrides).",
        "Run the same command again to resume; add --n-trials N to run N more trials. Scale-out: the same",
        "command on several machines with one --storage postgresql://... and one --mlflow-uri http://<server>.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bdense-study",
        description="Optuna study of B-DENSE branch-weight schedules (K, a, b) with every trial tracked in MLflow.",
        formatter_class=_Formatter,
        epilog=_preset_epilog(),
    )
    g = p.add_argument_group("study")
    g.add_argument("--n-trials", type=int, default=20, metavar="N", help="trials this command runs (the study keeps earlier ones)")
    g.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop starting new trials after S seconds; default: no limit")
    g.add_argument("--study-name", default=None, metavar="NAME",
                   help="Optuna study (and MLflow experiment) name; default: bdense-<preset>-<framework>-nfe<N>-<weights>-k<K...>")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL: journal:PATH (file, safe for several processes), sqlite:///PATH, "
                        "postgresql://...; default: journal:<runs-dir>/" + JOURNAL_NAME)
    g.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler")
    g.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="prune trials by their endpoint error during training (baselines are never pruned)")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="processes that share the study (and the device)")
    g.add_argument("--seed", type=int, default=0, help="first training seed; also seeds the sampler")
    g.add_argument("--ablation", choices=("k", "schedule", "nfe"), default=None,
                   help="first enqueue a designed grid of fixed configurations (analysis/ablation.py): every K, "
                        "a set of (a, b) schedules, or K=1 vs the best B-DENSE at NFE 2-5 (SFD only)")
    g.add_argument("--ablation-seeds", type=int, default=3, metavar="N", help="seeds per ablation configuration")
    g.add_argument("--seeds-per-trial", type=int, default=1, metavar="N",
                   help="training seeds per trial (the same in every trial); the objective is their mean FID")

    g = p.add_argument_group("method")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="named settings (below); default: cpu without CUDA, fmnist-gpu with CUDA")
    g.add_argument("--framework", choices=tuple(FRAMEWORKS), default="sfd", help="distillation framework")
    g.add_argument("--nfe", type=int, default=None, metavar="N", help="student network evaluations; default: the preset's")
    g.add_argument("--k", nargs="+", default=None, metavar="K",
                   help="branch counts to search over, e.g. --k 2 4 (K = 1, the baseline, is always added); "
                        "default: the preset's (pd: 1 2)")
    g.add_argument("--weights", choices=WEIGHT_MODES, default="exp",
                   help="exp: w_k = b*exp(a*k); free: one log-uniform weight per branch (w1..wK)")
    g.add_argument("--a-range", nargs=2, type=float, default=(-1.0, 1.0), metavar=("MIN", "MAX"),
                   help="growth rate a, uniform")
    g.add_argument("--b-range", nargs=2, type=float, default=(0.1, 10.0), metavar=("MIN", "MAX"),
                   help="intercept b, log-uniform")
    g.add_argument("--w-range", nargs=2, type=float, default=(0.1, 10.0), metavar=("MIN", "MAX"),
                   help="free weights w_k (--weights free), log-uniform")
    g.add_argument("--fid-samples", type=int, default=None, metavar="N", help="generated images per FID; default: the preset's")
    g.add_argument("--iterations", type=int, default=None, metavar="N", help="distillation iterations per trial; default: the preset's")
    g.add_argument("--bank-size", type=int, default=None, metavar="N",
                   help="SFD: teacher trajectories computed once per process and shared by its trials "
                        "(0: fresh ones every iteration); default: the preset's")

    g = p.add_argument_group("machine and stores")
    g.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1 ...; default: CUDA if present, else cpu")
    g.add_argument("--runs-dir", default=None, metavar="DIR",
                   help=f"run folder for the default stores and caches; default: ${RUNS_DIR_ENV} or ./runs")
    g.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="MLflow tracking URI; default: sqlite:///<runs-dir>/mlflow.db (artifacts in <runs-dir>/mlartifacts)")
    g.add_argument("--heartbeat-interval", type=int, default=30, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 4x this is failed and retried")
    g.add_argument("--_worker-index", dest="worker_index", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _k_choices(tokens: list[str] | None, preset: Preset, framework: str) -> tuple[int, ...]:
    fw = get_framework(framework)
    if tokens is None:
        return fw.k_choices(tuple(preset.k_choices))
    values = []
    for tok in tokens:
        for part in str(tok).replace(",", " ").split():
            try:
                values.append(int(part))
            except ValueError:
                raise UsageError(f"--k takes whole numbers, got {part!r}") from None
    if not values:
        raise UsageError("--k needs at least one branch count")
    bad = [k for k in values if k < 1]
    if bad:
        raise UsageError(f"--k: every K choice must be >= 1, got {bad[0]}")
    if fw.max_branches is not None and any(k > fw.max_branches for k in values):
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


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def parse_config(argv: list[str] | None = None) -> StudyConfig:
    """Parse and check the flags; raises :class:`UsageError` (argparse's own errors exit 2 directly)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    for name, value, low in [("--n-trials", args.n_trials, 1), ("--workers", args.workers, 1),
                             ("--seeds-per-trial", args.seeds_per_trial, 1), ("--ablation-seeds", args.ablation_seeds, 1),
                             ("--heartbeat-interval", args.heartbeat_interval, 1)]:
        if value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")

    if args.preset is None:
        from bdense_core.runtime import best_device

        try:
            cuda = best_device(args.device).type == "cuda"
        except (ValueError, RuntimeError) as e:
            raise UsageError(str(e)) from None
        args.preset = default_preset_name(cuda)
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        raise UsageError(str(e)) from None

    framework = args.framework
    k_choices = _k_choices(args.k, preset, framework)
    a_range = _range("--a-range", args.a_range, positive=False)
    b_range = _range("--b-range", args.b_range, positive=True)
    w_range = _range("--w-range", args.w_range, positive=True)

    if args.fid_samples is not None:
        if args.fid_samples < 2:
            raise UsageError(f"--fid-samples must be >= 2, got {args.fid_samples}")
        preset = replace(preset, fid_samples=args.fid_samples)
    if args.iterations is not None:
        if args.iterations < 1:
            raise UsageError(f"--iterations must be >= 1, got {args.iterations}")
        preset = preset.with_configs(lambda c: replace(c, iterations=args.iterations))

    if args.bank_size is not None:
        if args.bank_size < 0:
            raise UsageError(f"--bank-size must be >= 0, got {args.bank_size}")
        preset = replace(preset, bank_size=args.bank_size)

    fw = get_framework(framework)
    try:
        base = preset.config(framework)
        shared = fw.for_study(base, k_choices, args.nfe)  # checks the whole config once, with the largest K
    except ValueError as e:
        reason = str(e)
        raise UsageError(f"--nfe {args.nfe}: {reason}" if args.nfe is not None and "NFE" in reason else reason) from None
    nfe = shared.nfe
    preset = replace(preset, distill={**preset.distill, framework: shared})

    if args.ablation == "nfe" and not fw.nfe_per_trial:
        raise UsageError(f"--ablation nfe compares NFE 2-5, which --framework {framework} cannot (its NFE is fixed per study)")

    runs_dir = Path(args.runs_dir).expanduser() if args.runs_dir else default_runs_dir()
    runs_dir = runs_dir.resolve()
    storage_url = args.storage or f"journal:{runs_dir / JOURNAL_NAME}"
    mlflow_uri = args.mlflow_uri or f"sqlite:///{runs_dir / 'mlflow.db'}"
    study_name = args.study_name or (
        f"bdense-{preset.name}-{framework}-nfe{nfe}-{args.weights}-k{'-'.join(map(str, k_choices))}"
    )
    if not study_name.strip():
        raise UsageError("--study-name must not be empty")

    if args.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UsageError("--sampler cmaes needs the 'cmaes' package (pip install cmaes)") from None

    return StudyConfig(
        preset=preset, framework=framework, nfe=nfe, k_choices=k_choices, weights_mode=args.weights,
        a_range=a_range, b_range=b_range, w_range=w_range, sampler=args.sampler, pruner=args.pruner,
        seed=args.seed, seeds_per_trial=args.seeds_per_trial, n_trials=args.n_trials, timeout=args.timeout,
        workers=min(args.workers, args.n_trials), device=args.device, study_name=study_name,
        storage_url=storage_url, mlflow_uri=mlflow_uri, artifact_root=runs_dir / "mlartifacts",
        runs_dir=runs_dir, heartbeat_interval=args.heartbeat_interval, shared=shared,
        ablation=args.ablation, ablation_seeds=args.ablation_seeds, worker_index=args.worker_index, argv=tuple(argv),
    )


__all__ = ["StudyConfig", "UsageError", "build_parser", "parse_config"]
