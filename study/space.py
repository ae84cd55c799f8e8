"""The search space: K (categorical over the study's K choices) and the branch weights.

``--weights exp``: ``a`` uniform in ``--a-range`` and ``b`` log-uniform in ``--b-range``, ``w_k = b exp(a k)``.
``--weights free``: ``w1 .. wK`` each log-uniform in ``--w-range``; their (a, b) is fitted afterwards.
Trial parameter names are part of the storage contract read by ``analysis/``: ``K``, ``a``, ``b`` or
``w1..wK``.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from bdense_core.schedule import BranchWeights

from .cli import StudyConfig

BASELINE_K1 = "baseline-k1"
BASELINE_UNIFORM = "baseline-uniform"
SEARCH = "search"


@dataclass(frozen=True)
class TrialPoint:
    """One point of the space: K and its branch weights."""

    branches: int
    weights: BranchWeights

    @property
    def fitted_ab(self) -> tuple[float, float]:
        return self.weights.fitted_ab(self.branches)

    def weight_values(self) -> list[float]:
        return [float(w) for w in self.weights.weights(self.branches)]


def suggest(trial: optuna.Trial, config: StudyConfig) -> TrialPoint:
    """Draw (or read back, for enqueued and retried trials) K and the weights of ``trial``."""
    k = int(trial.suggest_categorical("K", list(config.k_choices)))
    if config.weights_mode == "exp":
        a = trial.suggest_float("a", *config.a_range)
        b = trial.suggest_float("b", *config.b_range, log=True)
        return TrialPoint(k, BranchWeights(mode="exp", a=a, b=b))
    values = tuple(trial.suggest_float(f"w{j}", *config.w_range, log=True) for j in range(1, k + 1))
    return TrialPoint(k, BranchWeights(mode="free", values=values))


def baseline_params(config: StudyConfig) -> list[tuple[str, dict]]:
    """The baselines every study starts with: plain distillation (K = 1) and uniform weights at the largest K."""
    k_max = max(config.k_choices)

    def params(k: int) -> dict:
        if config.weights_mode == "exp":
            return {"K": k, "a": 0.0, "b": 1.0}
        return {"K": k, **{f"w{j}": 1.0 for j in range(1, k + 1)}}

    out = []
    if 1 in config.k_choices:
        out.append((BASELINE_K1, params(1)))
    if k_max > 1:
        out.append((BASELINE_UNIFORM, params(k_max)))
    return out


def enqueue_baselines(study: optuna.Study, config: StudyConfig) -> list[str]:
    """Queue the baselines that the study does not hold yet (queued, running, finished or pruned).

    A baseline whose only attempts failed (Ctrl-C, a crash) is queued again; a pruned one (it diverged) is not.
    Returns the roles queued now.
    """
    keep = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    present = {t.user_attrs.get("role") for t in study.get_trials(deepcopy=False, states=keep)}
    queued = []
    for role, params in baseline_params(config):
        if role not in present:
            study.enqueue_trial(params, user_attrs={"role": role})
            queued.append(role)
    return queued
