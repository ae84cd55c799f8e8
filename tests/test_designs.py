"""The designed grids (study/designs.py): what they enqueue, that a study's workers run them, the ``b`` grid, and
``best_bdense_params`` following the contract's rule. Moved here from tests/test_analysis.py with the grids."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from analysis.load import trials_frame
from study import designs

optuna.logging.set_verbosity(optuna.logging.WARNING)
K_CHOICES = [1, 2, 4]
DISTS = {"K": CategoricalDistribution(K_CHOICES), "a": FloatDistribution(-1.0, 1.0),
         "b": FloatDistribution(1e-3, 1e3, log=True)}


def true_fid(k: int, a: float, b: float, nfe: int = 2) -> float:
    """A smooth synthetic FID: K = 1 at the NFE's base, K > 1 lower near a = 0.3 whatever b, K = 4 lowest."""
    base = {2: 30.0, 3: 25.0, 4: 22.0, 5: 21.0}[nfe]
    return base if k == 1 else base - (2.0 if k == 4 else 1.0) + 4.0 * (a - 0.3) ** 2


def test_ablation_grids():
    assert [c.label for c in designs.ablation_grid("k", [1, 2, 4], seeds=2)] == [
        "K=1", "K=2 (uniform a=0)", "K=4 (uniform a=0)"]
    k = designs.ablation_grid("k", [1, 2, 4], best_params={"K": 4, "a": 0.3, "b": 0.5})
    assert [c.params for c in k] == [{"K": 1, "a": 0.0, "b": 1.0}, {"K": 2, "a": 0.3, "b": 0.5},
                                     {"K": 4, "a": 0.3, "b": 0.5}]
    assert all(c.user_attrs["role"] == "ablation:k" and c.user_attrs["seeds"] == [1000, 1001, 1002] for c in k)
    # the seeds are apart from the search's (0, 1, ...) so a configuration from the search is re-run fresh
    assert designs.ablation_grid("k", [1, 2], seeds=2, first_seed=7)[0].user_attrs["seeds"] == [7, 8]
    sched = designs.ablation_grid("schedule", [1, 2, 4], best_params={"K": 2, "a": 0.3, "b": 0.5})
    assert {c.params["K"] for c in sched} == {2} and len(sched) == len(designs.SCHEDULES) + 1
    assert {"K": 2, "a": 0.0, "b": 1.0} in [c.params for c in sched]  # uniform is always in
    nfe = designs.ablation_grid("nfe", [1, 2, 4], best_params={"K": 4, "a": 0.3, "b": 0.5}, nfe_values=(2, 3))
    # per NFE: K = 1, the uniform baseline at K = 4, the best
    assert [(c.user_attrs["nfe"], c.params) for c in nfe] == [
        (n, p) for n in (2, 3) for p in ({"K": 1, "a": 0.0, "b": 1.0}, {"K": 4, "a": 0.0, "b": 1.0},
                                         {"K": 4, "a": 0.3, "b": 0.5})]
    assert [c.label for c in nfe[:3]] == ["NFE=2 K=1", "NFE=2 K=4, uniform a=0", "NFE=2 best K=4, a=0.3, b=0.5"]
    assert all("fidelity" not in c.user_attrs for c in nfe)
    # the uniform baseline is the K choice nearest 4; a best that is the uniform baseline is not run twice
    six = designs.ablation_grid("nfe", [1, 6, 8], best_params={"K": 8, "a": 1.0, "b": 2.0}, nfe_values=(2,))
    assert [c.params["K"] for c in six] == [1, 6, 8]
    same = designs.ablation_grid("nfe", [1, 2, 4], best_params={"K": 4, "a": 0.0, "b": 1.0}, nfe_values=(2,))
    assert [c.params for c in same] == [{"K": 1, "a": 0.0, "b": 1.0}, {"K": 4, "a": 0.0, "b": 1.0}]
    # a full-length grid in a screen study: each trial carries the length the objective trains it at
    full = designs.ablation_grid("b", [1, 4], best_params={"K": 4, "a": 0.5, "b": 1.0}, fidelity="full")
    assert {c.user_attrs["fidelity"] for c in full} == {"full"}
    free = designs.ablation_grid("k", [1, 2], best_params={"K": 2, "w1": 1.0, "w2": math.e}, weights_mode="free")
    assert free[1].params == {"K": 2, "w1": pytest.approx(1.0), "w2": pytest.approx(math.e)}
    for bad, match in ((dict(name="x"), "unknown ablation"), (dict(k_choices=[0, 2]), ">= 1"),
                       (dict(seeds=0), "seeds"), (dict(name="nfe", nfe_values=[0]), "NFE")):
        kwargs = dict(name="k", k_choices=[1, 2], seeds=1) | bad
        with pytest.raises(ValueError, match=match):
            designs.ablation_grid(**kwargs)
    with pytest.raises(ValueError, match="K > 1"):
        designs.ablation_grid("schedule", [1])


def test_enqueue_ablation_is_run_by_the_study_workers():
    """Enqueued configurations are what the next trials of study.optimize get, with their user attributes."""
    study = optuna.create_study()
    study.set_user_attr("weights_mode", "exp")
    study.set_user_attr("nfe", 2)
    best = {"K": 4, "a": 0.3, "b": 0.5}
    n = designs.enqueue_ablation(study, "nfe", [1, 2, 4], best_params=best, seeds=2, nfe_values=(2, 3, 4))
    assert n == 9
    assert designs.enqueue_ablation(study, "nfe", [1, 2, 4], best_params=best, seeds=2, nfe_values=(2, 3, 4)) == 0
    assert designs.enqueue_ablation(study, "k", [1, 2, 4], best_params=best) == 3
    seen = []

    def objective(trial):  # what study/'s objective does with an enqueued trial (K = 1 comes without params)
        if trial.user_attrs.get("K") == 1:
            k, a, b = 1, 0.0, 1.0
        else:
            k = trial.suggest_categorical("K", K_CHOICES)
            a, b = trial.suggest_float("a", -1, 1), trial.suggest_float("b", 1e-3, 1e3, log=True)
        nfe = trial.user_attrs.get("nfe", study.user_attrs["nfe"])
        seeds = trial.user_attrs.get("seeds", [0])
        seen.append((trial.user_attrs["role"], k, a, b, nfe, tuple(seeds)))
        fids = [true_fid(k, a, b, nfe) + 0.01 * (s - 1000) for s in seeds]
        trial.set_user_attr("fid_seeds", fids)
        return float(np.mean(fids))

    study.optimize(objective, n_trials=12)
    s = (1000, 1001)
    assert seen[:9] == [("ablation:nfe", k, a, b, nfe, s) for nfe in (2, 3, 4)
                        for k, a, b in ((1, 0.0, 1.0), (4, 0.0, 1.0), (4, 0.3, 0.5))]
    assert [s[0] for s in seen[9:]] == ["ablation:k"] * 3
    # completed configurations are not enqueued again; the study's best K>1 feeds the next grid
    assert designs.enqueue_ablation(study, "k", [1, 2, 4], best_params=best) == 0
    assert designs.best_bdense_params(study) == {"K": 4, "a": 0.3, "b": 0.5}
    df = trials_frame(study)
    from analysis import summary

    assert [r["nfe"] for r in summary.headline(df)] == [2, 3, 4]
    assert list(summary.ablation_table(df, "nfe")["nfe"]) == [2, 2, 2, 3, 3, 3, 4, 4, 4]
    free = optuna.create_study()
    free.set_user_attr("weights_mode", "free")
    designs.enqueue_ablation(free, "schedule", [1, 4], seeds=1)
    params = [t.system_attrs["fixed_params"] for t in free.get_trials(states=(TrialState.WAITING,))]
    assert len(params) == len(designs.SCHEDULES) and all(set(p) == {"K", "w1", "w2", "w3", "w4"} for p in params)
    waiting = trials_frame(free, require_complete=False)  # enqueued params show in the frame
    assert (waiting["K"] == 4).all() and (waiting["role"] == "ablation:schedule").all()


def test_b_grid_fixes_the_best_k_and_a():
    grid = designs.ablation_grid("b", [1, 2, 4], best_params={"K": 4, "a": 0.97, "b": 1.3})
    assert [c.params for c in grid] == [{"K": 4, "a": 0.97, "b": 0.1}, {"K": 4, "a": 0.97, "b": 1.0},
                                        {"K": 4, "a": 0.97, "b": 10.0}]
    assert all(c.user_attrs["role"] == "ablation:b" and c.user_attrs["seeds"] == [1000, 1001, 1002] for c in grid)
    assert len({c.label for c in grid}) == 3
    # without a search: uniform a = 0 at the largest K; other b values on request; free weights follow b e^(ak)
    plain = designs.ablation_grid("b", [1, 2], b_values=(0.5, 2.0), seeds=2)
    assert [c.params for c in plain] == [{"K": 2, "a": 0.0, "b": 0.5}, {"K": 2, "a": 0.0, "b": 2.0}]
    free = designs.ablation_grid("b", [1, 2], best_params={"K": 2, "w1": 1.0, "w2": math.e}, weights_mode="free")
    assert free[0].params == {"K": 2, "w1": pytest.approx(0.1 * math.e), "w2": pytest.approx(0.1 * math.e**2)}
    for bad in ((1.0,), (1.0, 1.0), (0.0, 1.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="b ablation needs two or more distinct"):
            designs.ablation_grid("b", [1, 4], b_values=bad)
    with pytest.raises(ValueError, match="K > 1"):
        designs.ablation_grid("b", [1])
    study = optuna.create_study()
    assert designs.enqueue_ablation(study, "b", [1, 4], best_params={"K": 4, "a": 0.5, "b": 1.0}) == 3
    assert designs.enqueue_ablation(study, "b", [1, 4], best_params={"K": 4, "a": 0.5, "b": 1.0}) == 0


def test_best_bdense_params_follows_the_contract():
    """The best configuration is the lowest mean over seeds, pooled over trials; trials at another NFE do not
    count; once there are full-length trials only they count (the confirmed best); the params are those of that
    configuration's best trial."""
    study = optuna.create_study()
    study.set_user_attr("nfe", 2)

    def add(k, a, fids, seeds, **attrs):
        study.add_trial(create_trial(params={"K": k, "a": a, "b": 1.0}, distributions=DISTS,
                                     value=float(np.mean(fids)),
                                     user_attrs={"fid_seeds": fids, "seeds": seeds, "role": "search", **attrs}))

    add(1, 0.0, [23.0], [0])
    add(4, 0.5, [21.9], [0])  # the lowest single trial ...
    add(4, 0.5, [22.9, 22.7], [1000, 1001])  # ... whose configuration averages 22.5 over three seeds
    add(2, 0.2, [22.2, 22.3], [0, 1])  # lowest mean: 22.25
    add(4, 0.9, [15.0], [0], nfe=4)  # another NFE
    add(4, 0.8, [10.0], [0], fidelity="screen", nfe=3)  # another NFE at the screen's length
    assert designs.best_bdense_params(study) == {"K": 2, "a": 0.2, "b": 1.0}
    add(2, 0.2, [16.4], [1000], fidelity="full")  # the confirmation: the screen's best ...
    add(2, 0.2, [16.2], [1001], fidelity="full")
    add(4, 0.5, [16.0], [1000], fidelity="full")  # ... loses to its runner-up at full length
    add(4, 0.5, [16.1], [1001], fidelity="full")
    add(4, 0.9, [12.0], [1000], fidelity="full", nfe=4)  # another NFE
    assert designs.best_bdense_params(study) == {"K": 4, "a": 0.5, "b": 1.0}
    assert designs.best_bdense_params(optuna.create_study()) is None
