"""The b question: does FID depend on the intercept b of ``w_k = b exp(a k)`` at a fixed growth rate a?

With Adam, b only rescales the loss (the weights are never normalised) and Adam's update is invariant to a
constant loss scale up to its epsilon, so b should not matter. The ``b`` grid (``study/designs.py``) trains
the best (K, a) with several b and several seeds each; this module reads it:

- per b: FID mean +- s.d. over seeds (the contract's groups: seeds pooled, each seed once);
- the test: a one-way ANOVA over the per-seed FIDs of the b values (needs two or more b values, at least one
  of them with two or more seeds), and every pair of b values by the contract's comparison (Welch's t, or the
  prediction interval for a single seed) with the Bonferroni count C(G, 2) for G values of b;
- the verdict: FID depends on b when the ANOVA's p is below alpha, and what that means for the paper's
  fitted a-b relation.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import pandas as pd

from study import contract as C

from .fit import main_nfe
from .summary import completed, group_stats, records

GRID = "b"

MEANING_FLAT = ("b only scales the loss, to which Adam is invariant: it is not a parameter of the schedule. A "
                "fitted a-b relation among the best trials then shows where the search happened to sample b, "
                "not a trade-off between a and b; only a (the shape of w_k) is worth reading from it.")
MEANING_DEPENDS = ("b is not a pure loss scale in this setting (with Adam a constant scale cancels up to its "
                   "epsilon; gradient clipping, weight decay or a loss comparable to epsilon break that): the "
                   "paper's fitted a-b relation may then carry information about b, and b belongs in the search.")


def b_question(trials: pd.DataFrame, alpha: float = 0.05, grid: str = GRID) -> dict[str, Any] | None:
    """The ``b`` grid's rows, its test and its verdict; None when the study has no completed trial of it.

    Returns ``rows`` (one per b: ``b``, ``K``, ``a``, ``mean``, ``std``, ``n_seeds``, ``n_trials``, ``fids``),
    ``K``/``a`` (None, with ``fixed=False``, when the grid's trials do not share one K and a), ``nfe``,
    ``fidelity``, ``anova`` (``F``, ``p``, ``df_between``, ``df_within``; None when it cannot be computed),
    ``pairs`` (the contract's comparisons, ``comparisons`` = C(G, 2)), ``depends`` (True, False, or None
    when the grid cannot tell), ``verdict`` and ``meaning`` (one sentence each).
    """
    done = completed(trials)
    mine = done[done["role"] == f"{C.ABLATION_PREFIX}{grid}"]
    if mine.empty:
        return None
    default = main_nfe(trials)
    recs = records(mine)
    nfe = C.nfe_of(recs[0], default)
    fid = C.fidelity_of(recs[0])
    gs = [g for g in C.groups(recs, nfe=nfe, fidelity=fid, default_nfe=default).values() if g.n > 0]
    rows = []
    for g in gs:
        st = group_stats(g)
        rows.append({k: st[k] for k in ("config", "K", "a", "b", "mean", "std", "n_seeds", "n_trials", "fids")})
    rows.sort(key=lambda r: (r["b"] is None, r["b"] or 0.0))
    ks = {r["K"] for r in rows}
    as_ = {None if r["a"] is None else round(float(r["a"]), 6) for r in rows}
    fixed = len(ks) == 1 and len(as_) == 1 and None not in as_
    out: dict[str, Any] = {"grid": grid, "nfe": nfe, "fidelity": fid, "rows": rows, "fixed": fixed,
                           "K": next(iter(ks)) if fixed else None, "a": next(iter(as_)) if fixed else None,
                           "anova": None, "pairs": [], "depends": None, "alpha": alpha}
    m = len(gs) * (len(gs) - 1) // 2
    for g1, g2 in combinations(sorted(gs, key=lambda g: g.key[3] if len(g.key) == 4 and g.key[3] else 0.0), 2):
        c = C.compare(g1, g2, comparisons=m, alpha=alpha)
        out["pairs"].append({"first": g1.label, "second": g2.label, **c.as_dict()})
    usable = [g.values for g in gs if g.n > 0]
    dof_within = sum(len(v) - 1 for v in usable)
    if len(usable) >= 2 and dof_within > 0:
        from scipy.stats import f_oneway

        res = f_oneway(*usable)
        f_stat, p = float(res.statistic), float(res.pvalue)
        if math.isfinite(p):
            out["anova"] = {"F": f_stat, "p": p, "df_between": len(usable) - 1, "df_within": dof_within}
            out["depends"] = p < alpha
    where = (f"at K = {out['K']}, a = {out['a']:.3g}" if fixed else "(the grid's trials do not share one K and a)")
    n_b = len(rows)
    if out["anova"] is None:
        out["verdict"] = (f"cannot tell whether FID depends on b {where}: the test needs two or more b values and "
                          f"at least one with two or more seeds ({n_b} b values, "
                          f"{', '.join(str(r['n_seeds']) for r in rows)} seeds)")
        out["meaning"] = "No statement about the paper's fitted a-b relation until the grid has seeds."
    else:
        an = out["anova"]
        beyond = sum(1 for p in out["pairs"] if p["beyond_noise"])
        test = (f"one-way ANOVA over {n_b} values of b, F({an['df_between']}, {an['df_within']}) = {an['F']:.3g}, "
                f"p = {an['p']:.2g}; {beyond} of {m} pairwise comparisons beyond noise at alpha = {alpha:g}/{m}")
        if out["depends"]:
            out["verdict"] = f"FID depends on b {where} ({test})"
            out["meaning"] = MEANING_DEPENDS
        else:
            out["verdict"] = f"FID does not depend on b beyond noise {where} ({test})"
            out["meaning"] = MEANING_FLAT
    return out
