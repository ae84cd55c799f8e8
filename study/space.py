"""The search space: K (categorical over the study's K > 1 choices) and the branch weights.

``--weights exp``: ``a`` uniform in ``--a-range`` and ``b`` log-uniform in ``--b-range``, ``w_k = b exp(a k)``.
``--weights free``: ``w1 .. wK`` each log-uniform in ``--w-range``; their (a, b) is fitted afterwards.

K = 1 is never searched: with one branch the weights only scale the loss, to which Adam is invariant, so every
K = 1 trial is a replicate of the baseline. K = 1 trials are enqueued (the baseline, designed grids, the
confirmation) without parameters and carry ``K = 1`` as a user attribute; :func:`enqueue` does that for any
caller. Parameter and attribute names are the study contract's (``study/contract.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import optuna

from bdense_core.schedule import BranchWeights

from . import contract as c
from .config import StudyConfig


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

    @property
    def label(self) -> str:
        if self.branches == 1:
            return "K=1"
        if self.weights.mode == "exp":
            return f"K={self.branches} a={self.weights.a:.3g} b={self.weights.b:.3g}"
        return f"K={self.branches} w=" + ",".join(f"{w:.2g}" for w in self.weight_values())


def suggest(trial: optuna.Trial, config: StudyConfig) -> TrialPoint:
    """Draw (or read back, for enqueued and retried trials) K and the weights of ``trial``."""
    if int(trial.user_attrs.get(c.PARAM_K, 0)) == 1:
        return TrialPoint(1, BranchWeights())
    k = int(trial.suggest_categorical(c.PARAM_K, list(config.search_k_choices)))
    if config.weights_mode == "exp":
        a = trial.suggest_float(c.PARAM_A, *config.a_range)
        b = trial.suggest_float(c.PARAM_B, *config.b_range, log=True)
        return TrialPoint(k, BranchWeights(mode="exp", a=a, b=b))
    values = tuple(trial.suggest_float(c.weight_param(j), *config.w_range, log=True) for j in range(1, k + 1))
    return TrialPoint(k, BranchWeights(mode="free", values=values))


def point_params(branches: int, weights_mode: str, a: float = 0.0, b: float = 1.0,
                 free: tuple[float, ...] | None = None) -> dict[str, Any]:
    """The trial params of a fixed configuration (empty for K = 1, see the module docstring)."""
    if branches == 1:
        return {}
    if weights_mode == "free":
        import math

        ws = free if free is not None and len(free) == branches else tuple(b * math.exp(a * j) for j in range(1, branches + 1))
        return {c.PARAM_K: branches, **{c.weight_param(j): float(w) for j, w in enumerate(ws, 1)}}
    return {c.PARAM_K: branches, c.PARAM_A: float(a), c.PARAM_B: float(b)}


def enqueue(study: optuna.Study, params: Mapping[str, Any], user_attrs: Mapping[str, Any]) -> None:
    """Enqueue one fixed configuration; a K = 1 configuration goes in without params and with ``K = 1``."""
    params = dict(params)
    attrs = dict(user_attrs)
    if int(params.get(c.PARAM_K, attrs.get(c.PARAM_K, 0)) or 0) == 1:
        params, attrs[c.PARAM_K] = {}, 1
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


UNIFORM_BASELINE_K = 4  # issue 13's and the paper's uniform baseline: equal weights over K = 4 branches


def uniform_baseline_k(k_choices) -> int | None:
    """The K of the uniform baseline: the K > 1 choice nearest :data:`UNIFORM_BASELINE_K` (the smaller on a tie)."""
    ks = [k for k in k_choices if k > 1]
    return min(ks, key=lambda k: (abs(k - UNIFORM_BASELINE_K), k)) if ks else None


def baseline_params(config: StudyConfig) -> list[tuple[str, dict]]:
    """The baselines every study starts with: plain distillation (K = 1) and uniform weights at K = 4 (or the K
    choice nearest it, :func:`uniform_baseline_k`)."""
    out = [(c.ROLE_BASELINE_K1, {c.PARAM_K: 1})]
    k_u = uniform_baseline_k(config.k_choices)
    if k_u is not None:
        out.append((c.ROLE_BASELINE_UNIFORM, point_params(k_u, config.weights_mode, 0.0, 1.0, (1.0,) * k_u)))
    return out


def enqueue_baselines(study: optuna.Study, config: StudyConfig, attrs: Mapping[str, Any]) -> list[str]:
    """Queue the baselines the study does not hold yet (queued, running, finished or pruned) at the search's
    fidelity, by configuration (a study made when the uniform baseline had another K gets this one's too). A
    baseline whose only attempts failed (Ctrl-C, a crash) is queued again; a pruned one is not.
    Returns the roles queued now."""
    keep = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    present = {params_key(trial_params(t), config) for t in study.get_trials(deepcopy=False, states=keep)
               if c.fidelity_of(t.user_attrs) == attrs.get(c.FIDELITY, c.SCREEN) and t.user_attrs.get(c.ROLE) in
               (c.ROLE_BASELINE_K1, c.ROLE_BASELINE_UNIFORM)}
    queued = []
    for role, params in baseline_params(config):
        if params_key(params, config) not in present:
            enqueue(study, params, {**attrs, c.ROLE: role})
            queued.append(role)
    return queued


def params_key(params: Mapping[str, Any], config: StudyConfig) -> tuple:
    """The contract's configuration key of a trial's parameters (K = 1 where they hold no K)."""
    return c.config_key({**params, c.WEIGHTS_MODE: config.weights_mode, c.PARAM_K: params.get(c.PARAM_K, 1)})


def trial_params(trial: optuna.trial.FrozenTrial) -> dict:
    """A trial's parameters: drawn, or fixed when it was enqueued and has not run yet."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})
