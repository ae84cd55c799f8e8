"""Command-line flags of ``study/run.py``; ``study/config.py`` checks and resolves them into a StudyConfig.

Every bad input ends in :class:`~study.config.UsageError`, which ``run.main`` prints as one line before exiting
with status 2.
"""

from __future__ import annotations

import argparse
import sys

from bdense_core.distill import FRAMEWORKS
from bdense_core.presets import LENGTHS, PRESETS
from bdense_core.schedule import WEIGHT_MODES

from .config import (
    JOURNAL_NAME, OBJECTIVES, PATHS, PRUNERS, RUNS_DIR_ENV, SAMPLERS, StudyConfig, UsageError, resolve,
)
from .designs import ABLATIONS


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


def _preset_epilog() -> str:
    lines = ["presets (bdense_core/presets.py):"]
    for p in PRESETS.values():
        lines.append(f"  {p.name:<12} {p.description}")
    lines += [
        "",
        "stores (default under --runs-dir): Optuna journal optuna-journal.log, MLflow sqlite mlflow.db with",
        "artifacts in mlartifacts/, teacher, bank and FID caches in cache/ ($BDENSE_CACHE_DIR overrides).",
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
    g.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help="search trials this command runs (the study keeps earlier ones)")
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
    g.add_argument("--seed", type=int, default=0, help="training seed of the search trials (their teacher paths and draw order)")
    g.add_argument("--seeds-per-trial", type=int, default=1, metavar="N",
                   help="training seeds per search trial (the same in every trial); the objective is their mean")
    g.add_argument("--objective", choices=OBJECTIVES, default="auto",
                   help="what a trial minimises; auto: KID below 2,000 FID samples (FID is strongly biased there), else FID")
    g.add_argument("--length", choices=LENGTHS, default="screen",
                   help="training length of the search trials: the preset's short screen, or SFD's full budget")
    g.add_argument("--confirm-top", type=int, default=0, metavar="N",
                   help="after the search, re-train the N best configurations and both baselines at --confirm-length")
    g.add_argument("--confirm-seeds", type=int, default=3, metavar="S", help="independent seeds per confirmed configuration")
    g.add_argument("--confirm-length", choices=LENGTHS, default="full", help="training length of the confirmation")
    g.add_argument("--ablation", choices=ABLATIONS, default=None,
                   help="first enqueue a designed grid of fixed configurations (study/designs.py)")
    g.add_argument("--ablation-seeds", type=int, default=3, metavar="N", help="seeds per ablation configuration")
    g.add_argument("--ablation-nfe", type=int, nargs="+", default=[2, 3, 4, 5], metavar="N",
                   help="the NFE values of --ablation nfe (default: 2 3 4 5); one grid may be run in parts")
    g.add_argument("--ablation-length", choices=LENGTHS, default=None,
                   help="training length of the ablation's trials (default: --length); full in a screen study runs "
                        "the headline at full length next to its screen and confirmation")

    g = p.add_argument_group("method")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="named settings (below); default: cpu without CUDA, fmnist-gpu with CUDA")
    g.add_argument("--framework", choices=tuple(FRAMEWORKS), default="sfd", help="distillation framework")
    g.add_argument("--nfe", type=int, default=None, metavar="N", help="student network evaluations; default: the preset's")
    g.add_argument("--k", nargs="+", default=None, metavar="K",
                   help="branch counts to search over, e.g. --k 2 4 (K = 1 is the baseline, never searched); "
                        "default: the preset's")
    g.add_argument("--weights", choices=WEIGHT_MODES, default="exp",
                   help="exp: w_k = b*exp(a*k); free: one log-uniform weight per branch (w1..wK)")
    g.add_argument("--a-range", nargs=2, type=float, default=(-1.0, 3.0), metavar=("MIN", "MAX"),
                   help="growth rate a, uniform")
    g.add_argument("--b-range", nargs=2, type=float, default=(0.1, 10.0), metavar=("MIN", "MAX"),
                   help="intercept b, log-uniform")
    g.add_argument("--w-range", nargs=2, type=float, default=(0.1, 10.0), metavar=("MIN", "MAX"),
                   help="free weights w_k (--weights free), log-uniform")
    g.add_argument("--distance", choices=("x", "state"), default=None,
                   help="progressive distillation's branch distance: x = x-space targets (Salimans & Ho), state = "
                        "DDIM states weighted as in the authors' code; default: the preset's (x)")
    g.add_argument("--fid-samples", type=int, default=None, metavar="N", help="generated images per FID; default: the preset's")
    g.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="distillation iterations of a search trial; default: the preset's for --length")
    g.add_argument("--paths", choices=PATHS, default="seed",
                   help="SFD teacher paths: seed = each training seed has its own paths (solved once per seed, "
                        "drawn without replacement); shared = one bank for every seed (seeds only reorder it); "
                        "fresh = solved every iteration")
    g.add_argument("--bank-size", type=int, default=None, metavar="N",
                   help="paths in the --paths shared bank; default: the preset's")

    g = p.add_argument_group("machine and stores")
    g.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1 ...; default: every CUDA device, else cpu")
    g.add_argument("--devices", default=None, metavar="LIST",
                   help="devices the workers are placed on, round-robin, e.g. cuda:0,cuda:1")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="processes that share the study")
    g.add_argument("--students-per-worker", type=int, default=None, metavar="N",
                   help="students a process trains at once as one batched model (several trials in one step); "
                        "default: the preset's")
    g.add_argument("--no-fast", dest="fast", action="store_false",
                   help="turn the CUDA fast path off (torch.compile, CUDA graphs, bf16, fused optimizer)")
    g.add_argument("--teacher-fp32", action="store_true",
                   help="SFD: solve the teacher's paths in fp32 on the fast path (default bf16, which moves the "
                        "shipped teacher's own FID by about +0.5)")
    g.add_argument("--runs-dir", default=None, metavar="DIR",
                   help=f"run folder for the default stores and caches; default: ${RUNS_DIR_ENV} or ./runs")
    g.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="MLflow tracking URI; default: sqlite:///<runs-dir>/mlflow.db (artifacts in <runs-dir>/mlartifacts)")
    g.add_argument("--teacher-file", default=None, metavar="PATH",
                   help="a teacher file (save_teacher's format, e.g. scripts/gpu/teacher.py's) to distil from instead "
                        "of the preset's shipped teacher; it must be trained on the preset's data")
    g.add_argument("--train-teacher", action="store_true",
                   help="train the preset's teacher here when its shipped file is missing or damaged (else: an error "
                        "naming the fix)")
    g.add_argument("--heartbeat-interval", type=int, default=None, metavar="S",
                   help="seconds between a running trial's heartbeats, set when the study is created (default 30; the study keeps "
                        "its own; a trial silent for 4x this is failed and retried)")
    return p


def parse_config(argv: list[str] | None = None) -> StudyConfig:
    """Parse and check the flags; raises :class:`UsageError` (argparse's own errors exit 2 directly)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return resolve(build_parser().parse_args(argv), tuple(argv))


__all__ = ["StudyConfig", "UsageError", "build_parser", "parse_config"]
