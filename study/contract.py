"""The study contract: the names both stores share, and the one rule for "best" and "improvement".

``study/`` writes these names, ``analysis/`` and the notebooks read them; nothing else spells them out. The
module imports only the standard library and SciPy's Student-t CDF (``scipy.special.stdtr``), so the report,
the notebooks and the end-of-study table can all use it.

The rule (:func:`headline`), applied to the trials of one NFE and one fidelity (``screen`` or ``full``):

- a *configuration* is K and its branch weights; all K = 1 trials are one configuration (with K = 1 the
  weights only scale the loss, to which Adam is invariant), whatever their a and b;
- a configuration's FIDs are pooled over its trials by *seed*: each distinct training seed counts once (the
  mean of its runs), so repeating a seed never shrinks the spread;
- the **baseline** is the K = 1 configuration; the **best** is the K > 1 configuration with the lowest mean
  FID over its seeds (ties: more seeds, then the earlier trial);
- the **improvement** is baseline mean minus best mean (positive: B-DENSE is better), tested with Welch's t
  when both sides have two or more seeds, or, when one side has a single seed, against the other side's
  spread over seeds (the prediction interval of one new seed); ``beyond_noise`` holds when the two-sided p is
  below ``alpha / m``, m being the number of K > 1 configurations the best was chosen from (Bonferroni). The
  best of many configurations measured once is an optimistic pick: the full-fidelity confirmation re-runs it
  on fresh seeds. With one seed on both sides nothing is judged (``method="none"``).
- **noise marks** (:func:`versus_baseline`): every K > 1 configuration is compared with K = 1 by the same
  test, m = the number of K > 1 configurations; ``Comparison.direction`` is ``"lower"``/``"higher"`` for
  those beyond noise. A figure's **replicate band** is the K = 1 runs' mean +- s.d. (``Group.run_mean``,
  ``Group.run_sd``: repeats of one seed included, so it shows the run-to-run spread the search's single
  trials carry); the test itself uses the per-seed spread (``Group.sd``), which a new seed must beat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# -- trial parameters (Optuna) ----------------------------------------------------------------------------
PARAM_K = "K"
PARAM_A = "a"
PARAM_B = "b"


def weight_param(j: int) -> str:
    """Free weight of branch ``j`` (1-based): ``w1``, ``w2``, ..."""
    return f"w{j}"


# -- roles of a trial (user attribute ``role``) ------------------------------------------------------------
ROLE_SEARCH = "search"
ROLE_BASELINE_K1 = "baseline-k1"
ROLE_BASELINE_UNIFORM = "baseline-uniform"
ROLE_CONFIRM = "confirm"  # a screened configuration re-trained at full length (fidelity "full")
ABLATION_PREFIX = "ablation:"

# -- fidelities (user attribute ``fidelity``) --------------------------------------------------------------
SCREEN = "screen"
FULL = "full"
FIDELITIES = (SCREEN, FULL)

# -- trial user attributes ---------------------------------------------------------------------------------
ROLE = "role"
FIDELITY = "fidelity"
FID = "fid"
KID = "kid"
FID_SEEDS = "fid_seeds"
KID_SEEDS = "kid_seeds"
FID_STD = "fid_std"
SEEDS = "seeds"
NFE = "nfe"
ITERATIONS = "iterations"
FRAMEWORK = "framework"
WEIGHTS_MODE = "weights_mode"
FITTED_A = "fitted_a"
FITTED_B = "fitted_b"
PRESET = "preset"
TEACHER_KEY = "teacher_key"
TEACHER_PATHS = "teacher_paths"
OBJECTIVE = "objective"  # which metric the trial's value is: "fid" or "kid"
MLFLOW_RUN_ID = "mlflow_run_id"
WALL_TIME_S = "wall_time_s"
FAIL_REASON = "fail_reason"
WORKER_PID = "worker_pid"
HOSTNAME = "hostname"
DEVICE = "device"  # where the trial trained: "cuda:1 (NVIDIA H200)", "cpu" (a study resumed on other machines mixes them)
RETRY_OF = "retry_of"
ABLATION = "ablation"
ABLATION_CONFIG = "ablation_config"
SCREEN_TRIAL = "screen_trial"  # on a confirmation trial: the screen trial it re-runs
CONFIRM_RANK = "confirm_rank"  # on a confirmation trial: 1..N for the screen's top N, 0 for the baselines
# What an enqueued trial is told to run besides its params: a retry of a failed trial keeps these.
PLAN_ATTRS = (ROLE, PARAM_K, SEEDS, NFE, FIDELITY, ABLATION, ABLATION_CONFIG, SCREEN_TRIAL, CONFIRM_RANK)
AFS = "afs"
BATCH_SIZE = "batch_size"
LR = "lr"
TEACHER_SUBSTEPS = "teacher_substeps"  # S: teacher steps per student interval
FID_ROUNDS = "fid_rounds"  # progressive distillation: FID after each round
FID_ROUNDS_SEEDS = "fid_rounds_seeds"  # progressive distillation: each seed's FIDs after each round (order of SEEDS)
DISTANCE = "distance"  # progressive distillation: "x" or "state"
# the training settings every table states (read from the trials; the study's attribute where a trial lacks one)
SETTINGS = (ITERATIONS, SEEDS, AFS, TEACHER_SUBSTEPS, BATCH_SIZE, LR, TEACHER_PATHS)

# -- study user attributes ---------------------------------------------------------------------------------
STUDY_PRESET = "preset"
STUDY_FRAMEWORK = "framework"
STUDY_NFE = "nfe"
STUDY_K_CHOICES = "k_choices"
STUDY_WEIGHTS_MODE = "weights_mode"
STUDY_FID_SAMPLES = "fid_samples"
STUDY_FID_REFERENCE = "fid_reference"
STUDY_TEACHER_KEY = "teacher_key"
STUDY_MLFLOW_URI = "mlflow_uri"
STUDY_MLFLOW_EXPERIMENT_ID = "mlflow_experiment_id"
STUDY_MLFLOW_PARENT_RUN_ID = "mlflow_parent_run_id"

# -- MLflow tags -------------------------------------------------------------------------------------------
TAG_KIND = "bdense.kind"  # "study" | "trial" | "teacher"
TAG_STUDY = "optuna_study_name"
TAG_TRIAL = "optuna_trial_number"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"


# -- records -----------------------------------------------------------------------------------------------
def trial_record(trial) -> dict[str, Any]:
    """A flat record of an Optuna ``FrozenTrial`` with the column names of ``analysis.load.load_trials``.

    ``a_eff``/``b_eff`` are the exponential schedule's (a, b), or the fitted pair for free weights.
    """
    rec: dict[str, Any] = dict(trial.params)
    rec.update(trial.user_attrs)
    rec["number"] = trial.number
    rec["state"] = trial.state.name
    rec["value"] = trial.value
    rec["a_eff"] = rec.get(PARAM_A, rec.get(FITTED_A))
    rec["b_eff"] = rec.get(PARAM_B, rec.get(FITTED_B))
    return rec


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _k(rec: Mapping[str, Any]) -> int | None:
    v = _num(rec.get(PARAM_K))
    return int(v) if v is not None else None


def fidelity_of(rec: Mapping[str, Any]) -> str:
    f = rec.get(FIDELITY)
    return f if isinstance(f, str) and f in FIDELITIES else SCREEN


def nfe_of(rec: Mapping[str, Any], default: int | None = None) -> int | None:
    v = _num(rec.get(NFE))
    return int(v) if v is not None else default


def config_key(rec: Mapping[str, Any]) -> tuple:
    """A configuration: ``(1,)`` for every K = 1 trial; ``(K, "exp", a, b)`` or ``(K, "free", w1..wK)``."""
    k = _k(rec)
    if k == 1:
        return (1,)
    if rec.get(WEIGHTS_MODE) == "free":
        ws = tuple(round(float(rec[weight_param(j)]), 6) for j in range(1, (k or 0) + 1)
                   if _num(rec.get(weight_param(j))) is not None)
        if ws:
            return (k, "free", ws)
    a, b = _num(rec.get("a_eff", rec.get(PARAM_A))), _num(rec.get("b_eff", rec.get(PARAM_B)))
    return (k, "exp", round(a, 6) if a is not None else None, round(b, 6) if b is not None else None)


def describe_config(key: tuple) -> str:
    if key == (1,):
        return "K=1"
    if len(key) == 3 and key[1] == "free":
        return f"K={key[0]}, w=" + ",".join(f"{w:.3g}" for w in key[2])
    k, _, a, b = key
    return f"K={k}, a={a:.3g}, b={b:.3g}" if a is not None and b is not None else f"K={k}"


def seed_values(rec: Mapping[str, Any], metric: str = FID) -> list[tuple[Any, float]]:
    """(seed, value) pairs of one trial: its per-seed list when it has one, else (trial number, its value)."""
    per = rec.get(FID_SEEDS if metric == FID else KID_SEEDS)
    seeds = rec.get(SEEDS)
    if isinstance(per, (list, tuple)) and per:
        vals = [_num(v) for v in per]
        if isinstance(seeds, (list, tuple)) and len(seeds) == len(per):
            return [(s, v) for s, v in zip(seeds, vals) if v is not None]
        return [((rec.get("number"), i), v) for i, v in enumerate(vals) if v is not None]
    v = _num(rec.get(metric))
    if v is None and metric == FID:
        v = _num(rec.get("value"))
    return [((rec.get("number"), 0), v)] if v is not None else []


def _sd(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


@dataclass
class Group:
    """One configuration's trials at one NFE and fidelity, pooled by seed."""

    key: tuple
    values: list[float] = field(default_factory=list)  # one per distinct seed (the mean of its runs)
    seeds: list[Any] = field(default_factory=list)
    trials: list[int] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)  # every (trial, seed) value, repeats of a seed included
    seed_runs: list[list[float]] = field(default_factory=list)  # each seed's runs, in the order of ``seeds``

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def sd(self) -> float:
        """Sample s.d. over the seeds (each seed's mean counts once): the spread the comparisons use."""
        return _sd(self.values)

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def run_mean(self) -> float:
        return sum(self.runs) / len(self.runs) if self.runs else float("nan")

    @property
    def run_sd(self) -> float:
        """Sample s.d. over every run, repeats of a seed included: the replicate band a figure draws."""
        return _sd(self.runs)

    @property
    def within_seed_sd(self) -> float:
        """Pooled s.d. of the repeated runs of one seed (run-to-run noise at a fixed seed); NaN without repeats."""
        reps = [r for r in self.seed_runs if len(r) > 1]
        dof = sum(len(r) - 1 for r in reps)
        if not dof:
            return float("nan")
        return math.sqrt(sum(sum((v - sum(r) / len(r)) ** 2 for v in r) for r in reps) / dof)

    @property
    def label(self) -> str:
        return describe_config(self.key)

    def as_dict(self) -> dict[str, Any]:
        return dict(config=self.label, key=list(self.key), mean=self.mean, sd=self.sd, n=self.n,
                    values=list(self.values), runs=list(self.runs), n_runs=self.n_runs,
                    seeds=[s if isinstance(s, (int, str)) else str(s) for s in self.seeds], trials=list(self.trials))


def groups(records: Iterable[Mapping[str, Any]], *, nfe: int | None = None, fidelity: str | None = None,
           default_nfe: int | None = None, metric: str = FID) -> dict[tuple, Group]:
    """Completed trials at ``nfe`` and ``fidelity`` (None: any), pooled into configurations by seed."""
    by_key: dict[tuple, dict[Any, list[float]]] = {}
    trials: dict[tuple, list[int]] = {}
    for rec in records:
        if rec.get("state") not in ("COMPLETE", None) or _num(rec.get("value")) is None:
            continue
        if nfe is not None and nfe_of(rec, default_nfe) != nfe:
            continue
        if fidelity is not None and fidelity_of(rec) != fidelity:
            continue
        key = config_key(rec)
        if key[0] is None:
            continue
        seeds = by_key.setdefault(key, {})
        for seed, v in seed_values(rec, metric):
            seeds.setdefault(seed if isinstance(seed, (int, str)) else tuple(seed), []).append(v)
        trials.setdefault(key, []).append(int(rec.get("number", -1)))
    out = {}
    for key, seeds in by_key.items():
        g = Group(key, trials=trials[key])
        for seed, vs in seeds.items():
            g.seeds.append(seed)
            g.values.append(sum(vs) / len(vs))
            g.runs.extend(vs)
            g.seed_runs.append(list(vs))
        out[key] = g
    return out


@dataclass
class Comparison:
    """``baseline - other`` (positive: ``other`` has the lower FID) and how it stands against the noise."""

    delta: float
    relative: float
    method: str  # "welch", "prediction" (one value against the other side's seeds) or "none"
    t: float = float("nan")
    df: float = float("nan")
    p: float = float("nan")
    comparisons: int = 1
    alpha: float = 0.05

    @property
    def beyond_noise(self) -> bool:
        return math.isfinite(self.p) and self.p < self.alpha / max(1, self.comparisons)

    @property
    def direction(self) -> str:
        """``"lower"`` (the other configuration beats the baseline beyond noise), ``"higher"`` or ``""``."""
        if not self.beyond_noise:
            return ""
        return "lower" if self.delta > 0 else "higher"

    def verdict(self, what: str = "B-DENSE") -> str:
        if self.method == "none":
            return f"{what} {'lower' if self.delta > 0 else 'higher'} by {abs(self.delta):.3g} FID; no spread to judge it by"
        if not self.beyond_noise:
            return (f"no difference beyond noise ({self.delta:+.3g} FID, p = {self.p:.2g}, "
                    f"{self.comparisons} comparison{'s' if self.comparisons != 1 else ''})")
        better = "helps" if self.delta > 0 else "hurts"
        return (f"{what} {better}: {self.delta:+.3g} FID (p = {self.p:.2g}, {self.comparisons} "
                f"comparison{'s' if self.comparisons != 1 else ''})")

    def as_dict(self) -> dict[str, Any]:
        return dict(delta=self.delta, relative=self.relative, method=self.method, t=self.t, df=self.df, p=self.p,
                    comparisons=self.comparisons, alpha=self.alpha, beyond_noise=self.beyond_noise,
                    direction=self.direction)


def _t_sf2(t: float, df: float) -> float:
    """Two-sided p of Student's t (``scipy.special.stdtr``: the CDF, without importing scipy.stats)."""
    from scipy.special import stdtr

    return float(2 * stdtr(df, -abs(t)))


def compare(baseline: Group, other: Group, comparisons: int = 1, alpha: float = 0.05) -> Comparison:
    """``baseline.mean - other.mean`` judged against the seeds' spread.

    Welch's t when both sides have two or more seeds; when one side has a single seed, the prediction
    interval of one new seed of the other side (t = delta / (s sqrt(1 + 1/n)), n - 1 degrees of freedom);
    ``method="none"`` (no p) when neither side has a spread (one seed each, or identical values).
    """
    delta = baseline.mean - other.mean
    rel = delta / baseline.mean if baseline.mean else float("nan")
    out = Comparison(delta, rel, "none", comparisons=comparisons, alpha=alpha)
    n1, n2 = baseline.n, other.n
    if n1 > 1 and n2 > 1:
        v1, v2 = baseline.sd**2, other.sd**2
        se2 = v1 / n1 + v2 / n2
        if not se2 > 0:
            return out
        out.method, out.t = "welch", delta / math.sqrt(se2)
        out.df = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    elif (n1 > 1 and n2 == 1) or (n1 == 1 and n2 > 1):
        ref = baseline if n1 > 1 else other
        se = ref.sd * math.sqrt(1 + 1 / ref.n)
        if not se > 0:
            return out
        out.method, out.t, out.df = "prediction", delta / se, ref.n - 1
    else:
        return out
    out.p = _t_sf2(out.t, out.df)
    return out


def versus_baseline(gs: Mapping[tuple, Group], alpha: float = 0.05) -> dict[tuple, Comparison]:
    """Every K > 1 configuration of ``gs`` against the K = 1 configuration, Bonferroni over all of them.

    Empty when ``gs`` has no K = 1 configuration. The number of comparisons is the number of K > 1
    configurations in ``gs``, whatever their seeds; ``Comparison.direction`` says which differ beyond noise.
    """
    base = gs.get((1,))
    others = [g for g in gs.values() if g.key != (1,) and g.n > 0]
    if base is None or base.n == 0:
        return {}
    return {g.key: compare(base, g, comparisons=len(others), alpha=alpha) for g in others}


@dataclass
class Headline:
    nfe: int | None
    fidelity: str | None
    baseline: Group | None
    best: Group | None
    improvement: Comparison | None
    candidates: int  # K > 1 configurations the best was chosen from

    def as_dict(self) -> dict[str, Any]:
        return dict(nfe=self.nfe, fidelity=self.fidelity, candidates=self.candidates,
                    baseline=self.baseline.as_dict() if self.baseline else None,
                    best=self.best.as_dict() if self.best else None,
                    improvement=self.improvement.as_dict() if self.improvement else None,
                    verdict=self.improvement.verdict() if self.improvement else None)


def best_group(gs: Mapping[tuple, Group]) -> Group | None:
    """The K > 1 configuration with the lowest mean (ties: more seeds, then the earliest trial)."""
    cands = [g for g in gs.values() if g.key != (1,) and g.n > 0]
    if not cands:
        return None
    return min(cands, key=lambda g: (g.mean, -g.n, min(g.trials) if g.trials else 0))


def headline(records: Iterable[Mapping[str, Any]], *, nfe: int | None = None, fidelity: str | None = None,
             default_nfe: int | None = None, alpha: float = 0.05) -> Headline:
    """Baseline K = 1 against the best B-DENSE configuration (the module docstring states the rule)."""
    gs = groups(records, nfe=nfe, fidelity=fidelity, default_nfe=default_nfe)
    base = gs.get((1,))
    best = best_group(gs)
    m = sum(1 for g in gs.values() if g.key != (1,))
    imp = compare(base, best, comparisons=m, alpha=alpha) if base is not None and best is not None else None
    return Headline(nfe, fidelity, base, best, imp, m)


def headline_fidelity(records: list[Mapping[str, Any]]) -> str:
    """The fidelity a study's headline uses: ``full`` once it has complete full-length trials, else ``screen``."""
    return FULL if any(fidelity_of(r) == FULL and r.get("state") == "COMPLETE" for r in records) else SCREEN
