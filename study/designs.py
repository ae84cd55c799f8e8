"""Designed grids of fixed configurations (ablations), enqueued into a study so its workers run them.

``python study/run.py --ablation k|schedule|nfe|b`` calls :func:`enqueue_ablation` and then runs the study's
workers as usual; Optuna hands the enqueued trials out first. Each configuration is **one** trial that runs
several seeds, like every search trial (its value is the mean FID over those seeds).

Contract with the study's objective (``study/``): an enqueued trial carries fixed params (``K``, ``a``, ``b``,
or ``K`` and ``w1..wK`` when the study's ``weights_mode`` user attribute is ``"free"``) and these user
attributes, set before it starts:

- ``role``: ``"ablation:<name>"`` (``k``, ``schedule``, ``nfe`` or ``b``); ``ablation``: the name;
  ``ablation_config``: a short label (``"K=4"``, ``"uniform a=0"``, ``"NFE=3 K=1"``);
- ``seeds``: the list of seeds to run (``first_seed`` .. ``first_seed + seeds - 1``, default 1000.., apart from
  the search's seeds) (the objective **reads** it when present, instead of its own seeds);
- ``nfe`` (the ``nfe`` grid only): the NFE of this trial's student (the objective **reads** it when
  present, instead of the study's NFE), so one study holds a designed comparison across NFE;
- ``fidelity`` when the grid is given one (``--ablation-length full`` in a screen study): the training length the
  objective **reads** instead of the study's, as for confirmation trials.

Grids (``seeds`` repeated seeds per configuration):

- ``k``: every K in the study's K choices with one fixed schedule: the best trial's (a, b) when
  ``best_params`` is given (free weights: their fitted (a, b)), else uniform weights (a = 0, b = 1);
- ``schedule``: at a fixed K (the best trial's K, else the largest K choice): uniform (a = 0, b = 1),
  early-heavy a = -0.5, late-heavy a = 0.5 and 1.0, the intercept b = 0.1 and 10 at a = 0, and the best
  (a, b) when given;
- ``nfe``: for each NFE in ``nfe_values``: the K = 1 baseline, the uniform baseline (K = 4 or the K choice nearest
  it, ``space.uniform_baseline_k``) and the best B-DENSE configuration (``best_params`` when its K > 1, else the
  largest K choice with uniform weights; not twice when it is the uniform baseline);
- ``b``: the intercept b at a fixed growth rate a: the best configuration's K and a (uniform a = 0 at the
  largest K choice without ``best_params``) with each b of ``b_values`` (default 0.1, 1, 10). With Adam, b
  only scales the loss, so this grid tests whether FID depends on b at all (``analysis.bgrid`` reads it).

``best_params`` comes from :func:`best_bdense_params`: the contract's best configuration
(``study.contract.headline``) among the study's trials at its NFE: the confirmed best once the study has
full-length (confirmation) trials, else the screen's best.

Re-running the same ablation does not enqueue duplicates: a configuration that already has a waiting,
running or completed trial with the same params, role, label and NFE is skipped (failed ones are retried).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import optuna

from . import contract as C
from . import space

ABLATIONS = ("k", "schedule", "nfe", "b")
B_VALUES = (0.1, 1.0, 10.0)  # the b grid's intercepts at the best a
# Ablation seeds start here, apart from the search's seeds (0, 1, ...): a configuration taken from the search
# (the best (a, b)) is re-run with fresh seeds, not scored again on the seed that selected it.
ABLATION_FIRST_SEED = 1000
# (a, b, label) at the fixed K of the ``schedule`` grid
SCHEDULES: tuple[tuple[float, float, str], ...] = (
    (0.0, 1.0, "uniform a=0"),
    (-0.5, 1.0, "early-heavy a=-0.5"),
    (0.5, 1.0, "late-heavy a=0.5"),
    (1.0, 1.0, "late-heavy a=1"),
    (0.0, 0.1, "uniform b=0.1"),
    (0.0, 10.0, "uniform b=10"),
)
_W = re.compile(r"^w(\d+)$")


@dataclass(frozen=True)
class AblationConfig:
    """One fixed configuration: the params to enqueue and the user attributes that go with them."""

    label: str
    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)


def _check(name: str, k_choices: Sequence[int], seeds: int, nfe_values: Sequence[int],
           b_values: Sequence[float] = B_VALUES) -> list[int]:
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    try:
        ks = sorted({int(k) for k in k_choices})
    except (TypeError, ValueError):
        raise ValueError(f"K choices must be integers, got {k_choices!r}") from None
    if not ks:
        raise ValueError("the ablation needs at least one K choice")
    if ks[0] < 1:
        raise ValueError(f"K choices must be >= 1, got {ks}")
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if name == "nfe":
        if not list(nfe_values):
            raise ValueError("the nfe ablation needs at least one NFE value")
        if any(int(n) < 1 for n in nfe_values):
            raise ValueError(f"NFE values must be >= 1, got {list(nfe_values)}")
    if name == "b":
        bs = [float(b) for b in b_values]
        if len(set(bs)) < 2 or not all(math.isfinite(b) and b > 0 for b in bs):
            raise ValueError(f"the b ablation needs two or more distinct finite b > 0, got {list(b_values)}")
    return ks


def _best_schedule(best_params: Mapping[str, Any] | None) -> tuple[int | None, float, float, tuple[float, ...] | None]:
    """(K, a, b, free weights or None) of ``best_params``; K None when it does not say."""
    if not best_params:
        return None, 0.0, 1.0, None
    k = best_params.get("K")
    k = int(k) if k is not None else None
    ws = {int(m.group(1)): float(v) for key, v in best_params.items() if (m := _W.match(key))}
    free = tuple(ws[i] for i in sorted(ws)) if ws and sorted(ws) == list(range(1, len(ws) + 1)) else None
    if "a" in best_params and "b" in best_params:
        a, b = float(best_params["a"]), float(best_params["b"])
    elif free and all(w > 0 for w in free):
        from bdense_core.schedule import fit_exponential  # the one exponential fit (bdense_core is heavy: lazily)

        a, b = fit_exponential(free)
    else:
        a, b = 0.0, 1.0
    if k is None and free:
        k = len(free)
    if not (math.isfinite(a) and math.isfinite(b) and b > 0):
        raise ValueError(f"best_params has an unusable schedule a={a}, b={b}")
    return k, a, b, free


def _params(k: int, a: float, b: float, weights_mode: str, free: tuple[float, ...] | None = None) -> dict[str, Any]:
    if weights_mode == "free":
        ws = free if free is not None and len(free) == k else tuple(b * math.exp(a * i) for i in range(1, k + 1))
        if k == 1:
            ws = (1.0,)
        return {"K": k, **{f"w{i}": float(w) for i, w in enumerate(ws, 1)}}
    if k == 1:
        return {"K": 1, "a": 0.0, "b": 1.0}
    return {"K": k, "a": float(a), "b": float(b)}


def ablation_grid(name: str, k_choices: Sequence[int], best_params: Mapping[str, Any] | None = None,
                  seeds: int = 3, nfe_values: Sequence[int] = (2, 3, 4, 5),
                  weights_mode: str = "exp", first_seed: int = ABLATION_FIRST_SEED,
                  b_values: Sequence[float] = B_VALUES, fidelity: str | None = None) -> list[AblationConfig]:
    """The configurations of ablation ``name`` (see the module docstring), without touching any study; with
    ``fidelity`` (``screen`` or ``full``) each trial trains at that length whatever the study's."""
    ks = _check(name, k_choices, seeds, nfe_values, b_values)
    best_k, a_best, b_best, free = _best_schedule(best_params)
    seed_list = list(range(int(first_seed), int(first_seed) + int(seeds)))
    configs: list[AblationConfig] = []

    def add(label: str, params: dict[str, Any], **extra: Any) -> None:
        attrs = {C.ROLE: f"{C.ABLATION_PREFIX}{name}", C.ABLATION: name, C.ABLATION_CONFIG: label,
                 C.SEEDS: list(seed_list)}
        if fidelity is not None:
            attrs[C.FIDELITY] = fidelity
        attrs.update(extra)
        configs.append(AblationConfig(label=label, params=params, user_attrs=attrs))

    if name == "k":
        sched = f"a={a_best:.3g}, b={b_best:.3g}" if best_params else "uniform a=0"
        for k in ks:
            add(f"K={k}" + (f" ({sched})" if k > 1 else ""), _params(k, a_best, b_best, weights_mode))
    elif name == "schedule":
        k = best_k if best_k is not None and best_k > 1 else ks[-1]
        if k < 2:
            raise ValueError("the schedule ablation needs a K > 1 among the K choices or in best_params")
        seen = set()
        for a, b, label in SCHEDULES:
            seen.add((round(a, 9), round(b, 9)))
            add(f"K={k}, {label}", _params(k, a, b, weights_mode))
        if best_params and (round(a_best, 9), round(b_best, 9)) not in seen:
            best_free = free if free is not None and len(free) == k else None
            add(f"K={k}, best a={a_best:.3g}, b={b_best:.3g}", _params(k, a_best, b_best, weights_mode, best_free))
    elif name == "b":
        if best_k is not None and best_k > 1:
            k, a = best_k, a_best
        else:
            k, a = ks[-1], 0.0
        if k < 2:
            raise ValueError("the b ablation needs a K > 1 among the K choices or in best_params")
        for b in sorted({float(b) for b in b_values}):
            add(f"K={k}, a={a:.3g}, b={b:g}", _params(k, a, b, weights_mode))
    else:  # nfe
        if best_k is not None and best_k > 1:
            k, a, b, f = best_k, a_best, b_best, free
            what = f"best K={k}, a={a:.3g}, b={b:.3g}"
        else:
            k, a, b, f = ks[-1], 0.0, 1.0, None
            what = f"K={k}, uniform a=0"
        if k < 2:
            raise ValueError("the nfe ablation needs a K > 1 among the K choices or in best_params")
        k_u = space.uniform_baseline_k(ks)
        uniform = _params(k_u, 0.0, 1.0, weights_mode) if k_u is not None else None
        best = _params(k, a, b, weights_mode, f)
        for nfe in sorted({int(n) for n in nfe_values}):
            add(f"NFE={nfe} K=1", _params(1, 0.0, 1.0, weights_mode), **{C.NFE: nfe})
            if uniform is not None and not _same(uniform, best):
                add(f"NFE={nfe} K={k_u}, uniform a=0", uniform, **{C.NFE: nfe})
            add(f"NFE={nfe} {what}", best, **{C.NFE: nfe})
    return configs


def _same(p: Mapping[str, Any], q: Mapping[str, Any]) -> bool:
    if set(p) != set(q):
        return False
    for key, v in p.items():
        w = q[key]
        if isinstance(v, (int, float)) and isinstance(w, (int, float)):
            if not math.isclose(float(v), float(w), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif v != w:
            return False
    return True


def _trial_params(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's params as a grid writes them (``space.trial_params``: drawn, or fixed while it waits); a K = 1
    trial holds none (see ``space.enqueue``), so it reads as K = 1, a = 0, b = 1."""
    params = space.trial_params(t)
    if int(t.user_attrs.get(C.PARAM_K, 0) or 0) == 1:
        return _params(1, 0.0, 1.0, "free" if any(_W.match(k) for k in params) else "exp")
    return params


def _exists(trials: Iterable[optuna.trial.FrozenTrial], cfg: AblationConfig) -> bool:
    live = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
    for t in trials:
        if t.state not in live:
            continue
        u = t.user_attrs
        if (u.get(C.ROLE) == cfg.user_attrs[C.ROLE] and u.get(C.ABLATION_CONFIG) == cfg.user_attrs[C.ABLATION_CONFIG]
                and u.get(C.NFE) == cfg.user_attrs.get(C.NFE, u.get(C.NFE))
                and u.get(C.FIDELITY) == cfg.user_attrs.get(C.FIDELITY, u.get(C.FIDELITY))
                and _same(_trial_params(t), cfg.params)):
            return True
    return False


def enqueue_ablation(study: optuna.Study, name: str, k_choices: Sequence[int],
                     best_params: Mapping[str, Any] | None = None, seeds: int = 3,
                     nfe_values: Sequence[int] = (2, 3, 4, 5), first_seed: int = ABLATION_FIRST_SEED,
                     b_values: Sequence[float] = B_VALUES, fidelity: str | None = None) -> int:
    """Enqueue the grid of ablation ``name`` into ``study``; returns how many trials were enqueued.

    The study's ``weights_mode`` user attribute (``"exp"`` by default) decides whether configurations are
    enqueued as ``K, a, b`` or as ``K, w1..wK``. Configurations already waiting, running or completed in the
    study are not enqueued again. Raises ValueError (one line) for an unknown name or bad arguments.
    """
    mode = str(study.user_attrs.get(C.STUDY_WEIGHTS_MODE) or "exp")
    configs = ablation_grid(name, k_choices, best_params=best_params, seeds=seeds, nfe_values=nfe_values,
                            weights_mode=mode, first_seed=first_seed, b_values=b_values, fidelity=fidelity)
    existing = study.get_trials(deepcopy=False)
    n = 0
    for cfg in configs:
        if _exists(existing, cfg):
            continue
        space.enqueue(study, cfg.params, cfg.user_attrs)
        n += 1
    return n


def best_bdense_params(study: optuna.Study) -> dict[str, Any] | None:
    """Params of the contract's best K > 1 configuration among the study's completed trials at its NFE (None if
    there is none): the trial of that configuration with the lowest value. The headline's fidelity decides which
    trials count (``contract.headline_fidelity``): the full-length ones once there are any (the confirmed best),
    else the screen's.

    Trials at another NFE (the nfe grid) are left out. Meant as ``best_params`` for :func:`enqueue_ablation`.
    """
    nfe = study.user_attrs.get(C.STUDY_NFE)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    recs = [C.trial_record(t) for t in done]
    nfe = int(nfe) if nfe is not None else None
    best = C.headline(recs, nfe=nfe, fidelity=C.headline_fidelity(recs), default_nfe=nfe).best
    if best is None:
        return None
    mine = [t for t in done if t.number in set(best.trials) and t.value is not None]
    return dict(min(mine, key=lambda t: (t.value, t.number)).params) if mine else None
