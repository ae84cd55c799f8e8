"""Seed-paired comparisons with K = 1: a second reading of the same trials, beside the contract's test.

The contract (``study/contract.py``) compares a configuration with K = 1 by Welch's t over the two sets of seeds,
as if they were independent samples. They are not: with ``--paths seed`` a seed fixes the teacher paths' noise
and the order in which a student draws them, in every configuration, so a configuration and K = 1 trained on
the same seed form a matched pair, and the seed's own luck (a seed whose paths make every student good) cancels
in their difference. This module reads, for each configuration at one NFE and fidelity, the seeds it shares
with K = 1 (each seed's mean of its runs, as the contract pools them): the per-seed differences
``FID(K = 1) - FID(config)`` (positive: the configuration is better), their mean, s.d., how many are positive,
and the paired t-test on them (n - 1 degrees of freedom), Bonferroni over the configurations with two or more
shared seeds. It never replaces the contract's verdict; a report shows both.

How well a pair is matched depends on the study: seeds solved into banks on different machines (bf16 teacher
paths from the same noise) differ by that rounding, and trials of one seed trained on different machines by
the GPUs' nondeterminism; the report says which machines trained what (``device``).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy import stats

from study import contract as C

from .fit import main_nfe
from .summary import _nfes, _seed_order, records


def paired_table(trials: pd.DataFrame, nfe: int | None, fidelity: str | None, alpha: float = 0.05,
                 recs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per K > 1 configuration with two or more seeds in common with K = 1 (best mean difference first).

    Each row: ``config``, ``seeds`` (the shared ones, sorted), ``diffs`` (K = 1 minus the configuration, per
    shared seed), ``mean``, ``sd``, ``n``, ``positive`` (how many diffs > 0), ``t``, ``p`` (two-sided, paired;
    NaN when every seed's difference is the same: no spread to judge it by), ``comparisons`` (the Bonferroni
    count: the rows of this table) and ``beyond_noise`` (p < alpha / comparisons). Empty without a K = 1
    configuration at that NFE and fidelity. A trial without an NFE of its own has the study's (as in the
    headline). ``recs``: the frame's records, when the caller has them already.
    """
    gs = C.groups(records(trials) if recs is None else recs, nfe=nfe, fidelity=fidelity,
                  default_nfe=main_nfe(trials))
    base = gs.get((1,))
    if base is None:
        return []
    k1 = dict(zip(base.seeds, base.values))
    rows = []
    for key, g in gs.items():
        if key == (1,):
            continue
        mine = dict(zip(g.seeds, g.values))
        shared = sorted(set(k1) & set(mine), key=_seed_order)
        if len(shared) < 2:
            continue
        diffs = [k1[s] - mine[s] for s in shared]
        mean, sd = sum(diffs) / len(diffs), float(pd.Series(diffs).std(ddof=1))
        if sd > 1e-9 * max(1.0, abs(mean)):
            res = stats.ttest_1samp(diffs, 0.0)
            t, p = float(res.statistic), float(res.pvalue)
        else:  # equal differences on every seed: no spread to judge them by (the contract's "none")
            t = p = float("nan")
        rows.append(dict(config=g.label, seeds=shared, diffs=diffs, n=len(diffs), mean=mean, sd=sd,
                         positive=sum(d > 0 for d in diffs), t=t, p=p))
    for r in rows:
        r["comparisons"] = len(rows)
        r["beyond_noise"] = math.isfinite(r["p"]) and r["p"] < alpha / len(rows)
    return sorted(rows, key=lambda r: -r["mean"])


def paired_tables(trials: pd.DataFrame, alpha: float = 0.05) -> list[dict[str, Any]]:
    """:func:`paired_table` for every (NFE, fidelity) the completed trials have, as ``{nfe, fidelity, rows}``."""
    recs, default = records(trials), main_nfe(trials)
    out = []
    for fidelity in C.FIDELITIES:
        for nfe in _nfes(recs, default, fidelity):
            rows = paired_table(trials, nfe, fidelity, alpha, recs)
            if rows:
                out.append(dict(nfe=nfe, fidelity=fidelity, rows=rows))
    return out
