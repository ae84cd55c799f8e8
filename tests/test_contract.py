"""The study contract's one rule for "best" and "improvement" (study/contract.py) on its edge cases: one seed,
repeated seeds, ties, the Bonferroni count, the noise marks, and the records both stores produce."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial
from scipy import stats

from study import contract as C

optuna.logging.set_verbosity(optuna.logging.WARNING)


def rec(number, k, fids, seeds=None, a=0.5, b=1.0, nfe=2, fidelity=None, **extra):
    """A completed trial's record as analysis/ and study/ build it (value = mean over its seeds)."""
    seeds = list(range(len(fids))) if seeds is None else seeds
    r = {"number": number, "state": "COMPLETE", "value": sum(fids) / len(fids), "K": k, "a": a, "b": b,
         "a_eff": a, "b_eff": b, "fid_seeds": list(fids), "seeds": list(seeds), "nfe": nfe, "weights_mode": "exp"}
    if fidelity:
        r["fidelity"] = fidelity
    r.update(extra)
    return r


def test_one_seed_on_both_sides_is_not_judged():
    gs = C.groups([rec(0, 1, [22.6]), rec(1, 4, [22.1])])
    c = C.compare(gs[(1,)], gs[(4, "exp", 0.5, 1.0)])
    assert c.method == "none" and math.isnan(c.p) and not c.beyond_noise and c.direction == ""
    assert c.delta == pytest.approx(0.5) and "no spread" in c.verdict()


def test_one_seed_against_seeds_uses_the_prediction_interval_either_way():
    base = [23.0, 23.4, 22.9, 23.3]
    gs = C.groups([rec(0, 1, base), rec(1, 4, [22.0])])
    c = C.compare(gs[(1,)], gs[(4, "exp", 0.5, 1.0)])
    s = stats.tstd(base)  # sample s.d., ddof = 1
    t = (sum(base) / 4 - 22.0) / (s * math.sqrt(1 + 1 / 4))
    assert c.method == "prediction" and c.df == 3
    assert c.t == pytest.approx(t) and c.p == pytest.approx(2 * stats.t.sf(abs(t), 3))
    # the other way round (one baseline seed, several B-DENSE seeds): the B-DENSE seeds' spread
    flipped = C.compare(gs[(4, "exp", 0.5, 1.0)], gs[(1,)])
    assert flipped.method == "prediction" and flipped.t == pytest.approx(-t) and flipped.p == pytest.approx(c.p)


def test_welch_matches_scipy_and_bonferroni_counts_the_candidates():
    base, other = [23.0, 23.4, 22.9, 23.3], [22.1, 22.5, 22.2]
    gs = C.groups([rec(0, 1, base), rec(1, 4, other)])
    c = C.compare(gs[(1,)], gs[(4, "exp", 0.5, 1.0)])
    ref = stats.ttest_ind(base, other, equal_var=False)
    assert c.method == "welch" and c.t == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue)
    assert c.beyond_noise  # p ~ 0.003 < 0.05
    many = C.compare(gs[(1,)], gs[(4, "exp", 0.5, 1.0)], comparisons=50)
    assert many.p == pytest.approx(c.p) and not many.beyond_noise  # 0.003 > 0.05 / 50
    assert "50 comparisons" in many.verdict()


def test_repeated_seeds_count_once_and_never_shrink_the_spread():
    # two K = 1 trials both ran seeds 0 and 1; a third ran seed 2
    recs = [rec(0, 1, [22.0, 23.0], seeds=[0, 1]), rec(1, 1, [22.2, 23.2], seeds=[0, 1]),
            rec(2, 1, [22.6], seeds=[2])]
    g = C.groups(recs)[(1,)]
    assert sorted(g.seeds) == [0, 1, 2] and g.n == 3 and g.n_runs == 5
    assert sorted(g.values) == pytest.approx([22.1, 22.6, 23.1])
    assert g.sd == pytest.approx(0.5)  # s.d. of the seed means 22.1, 22.6, 23.1
    assert g.run_sd == pytest.approx(stats.tstd([22.0, 23.0, 22.2, 23.2, 22.6]))
    # run-to-run at a fixed seed: seed 0 (22.0, 22.2) and seed 1 (23.0, 23.2), pooled over 2 degrees of freedom
    assert g.within_seed_sd == pytest.approx(math.sqrt((0.01 + 0.01 + 0.01 + 0.01) / 2))
    assert sorted(g.trials) == [0, 1, 2]


def test_all_k1_trials_are_one_configuration_whatever_their_a_and_b():
    gs = C.groups([rec(0, 1, [22.5], seeds=[0], a=0.0, b=1.0), rec(1, 1, [22.7], seeds=[0], a=-0.9, b=5.0)])
    assert list(gs) == [(1,)] and gs[(1,)].n == 1 and gs[(1,)].n_runs == 2
    assert math.isnan(gs[(1,)].sd) and gs[(1,)].within_seed_sd == pytest.approx(stats.tstd([22.5, 22.7]))


def test_ties_go_to_more_seeds_then_the_earlier_trial():
    recs = [rec(0, 1, [23.0, 23.2]),
            rec(5, 4, [22.0], a=0.9), rec(3, 4, [22.0], a=0.8),  # equal means, one seed each: trial 3 wins
            rec(7, 2, [21.5, 22.5], a=0.1)]  # same mean as above (22.0), two seeds: wins the tie
    h = C.headline(recs)
    assert h.best.key == (2, "exp", 0.1, 1.0) and h.candidates == 3
    h2 = C.headline(recs[:3])
    assert h2.best.key == (4, "exp", 0.8, 1.0) and h2.best.trials == [3]


def test_headline_is_per_nfe_and_fidelity():
    recs = [rec(0, 1, [23.0, 23.2, 23.1]), rec(1, 4, [22.0, 22.1, 21.9]),
            rec(2, 1, [13.0, 13.2, 13.1], nfe=4), rec(3, 4, [13.4, 13.5, 13.3], nfe=4),
            rec(4, 1, [10.0], fidelity="full", seeds=[10]), rec(5, 1, [10.2], fidelity="full", seeds=[11]),
            rec(6, 4, [11.0], fidelity="full", seeds=[10]), rec(7, 4, [11.1], fidelity="full", seeds=[11])]
    assert C.headline_fidelity(recs) == C.FULL and C.headline_fidelity(recs[:4]) == C.SCREEN
    at2 = C.headline(recs, nfe=2, fidelity=C.SCREEN)
    assert at2.improvement.delta == pytest.approx(1.1) and at2.improvement.beyond_noise
    at4 = C.headline(recs, nfe=4, fidelity=C.SCREEN)
    assert at4.improvement.delta == pytest.approx(-0.3) and at4.improvement.verdict().startswith("B-DENSE hurts")
    full = C.headline(recs, nfe=2, fidelity=C.FULL)  # full-length trials: one seed per trial, pooled by seed
    assert full.baseline.n == 2 and full.best.n == 2 and full.improvement.delta == pytest.approx(-0.95)
    assert full.baseline.trials == [4, 5]


def test_versus_baseline_marks_each_configuration_with_the_count_of_all():
    recs = [rec(0, 1, [23.0, 23.2, 23.1, 22.9]),
            rec(1, 4, [21.0, 21.1, 20.9], a=0.9),  # far below K = 1
            rec(2, 4, [23.05], a=0.1),  # inside the noise
            rec(3, 4, [30.0], a=-0.9)]  # far above
    cmp = C.versus_baseline(C.groups(recs))
    assert {c.comparisons for c in cmp.values()} == {3}
    assert cmp[(4, "exp", 0.9, 1.0)].direction == "lower"
    assert cmp[(4, "exp", 0.1, 1.0)].direction == ""
    assert cmp[(4, "exp", -0.9, 1.0)].direction == "higher"
    assert C.versus_baseline(C.groups(recs[1:])) == {}  # no K = 1: nothing to compare with


def test_free_weights_and_failed_trials():
    recs = [rec(0, 2, [22.0], weights_mode="free", w1=0.5, w2=2.0),
            rec(1, 2, [22.4], weights_mode="free", w1=0.5, w2=2.0000000001, seeds=[1]),
            {"number": 2, "state": "FAIL", "value": None, "K": 2, "weights_mode": "free", "w1": 1.0, "w2": 1.0}]
    gs = C.groups(recs)
    assert list(gs) == [(2, "free", (0.5, 2.0))] and gs[(2, "free", (0.5, 2.0))].n == 2
    assert C.describe_config((2, "free", (0.5, 2.0))) == "K=2, w=0.5,2"


def test_trial_record_gives_the_frame_columns():
    from analysis.load import trials_frame

    study = optuna.create_study()
    study.set_user_attr("nfe", 2)
    dists = {"K": CategoricalDistribution([1, 4]), "a": FloatDistribution(-1, 1), "b": FloatDistribution(0.1, 10)}
    for i, (k, fids, seeds) in enumerate([(1, [23.0, 23.2], [0, 1]), (1, [23.4], [1]), (4, [22.0, 22.4], [0, 1])]):
        study.add_trial(create_trial(params={"K": k, "a": 0.5, "b": 2.0}, distributions=dists,
                                     value=sum(fids) / len(fids),
                                     user_attrs={"fid_seeds": fids, "seeds": seeds, "role": "search",
                                                 "fidelity": "screen", "iterations": 80}))
    from_optuna = [C.trial_record(t) for t in study.trials]
    from_frame = trials_frame(study).to_dict("records")
    for col in ("number", "state", "value", "K", "a", "b", "a_eff", "b_eff", "fid_seeds", "seeds", "fidelity"):
        assert [r[col] for r in from_optuna] == [r[col] for r in from_frame], col
    h1, h2 = C.headline(from_optuna), C.headline(from_frame, default_nfe=2)
    assert h1.as_dict() == h2.as_dict()
    assert h1.baseline.n == 2 and h1.baseline.values == pytest.approx([23.0, 23.3])
