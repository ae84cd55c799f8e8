"""Screen vs full length: does the short screen's ranking hold when the configurations are trained fully?

A study that confirms (``--confirm-top N``) re-trains the screen's top N configurations and the two baselines
at full length, one seed per trial, as trials with ``fidelity="full"``, ``role="confirm"`` (or the baseline's
role), ``screen_trial`` (the screen trial re-run; for a baseline, the screen baseline's number) and
``confirm_rank`` (1..N, 0 for the baselines). This module reads them:

- per confirmed configuration: its screen trial's FID, the screen FID pooled over every screen trial of that
  configuration (the contract's groups: seeds pooled) and the full-length FID (mean +- s.d., n seeds);
- the Spearman rank correlation between the pooled screen FID and the full-length mean over the confirmed
  configurations (baselines included), with n and its p;
- the screen's winner and the full-length winner (both the contract's best K > 1 configuration at that
  fidelity) and whether they are the same; the lowest full-length FID of all (K = 1 included);
- the screen headline and the full-length headline side by side (the contract's rule and verdict each).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from study import contract as C

from .fit import main_nfe
from .summary import group_stats, records, settings_for


def _num(x: Any) -> float | None:
    return C._num(x)


EXACT_UP_TO = 8  # Spearman's p by every pairing up to this many configurations (8! = 40,320)


def _spearman(x: list[float], y: list[float]) -> tuple[float, float, str]:
    """Spearman's rho and its two-sided p: exact over every pairing of the ranks for a few configurations (the
    t approximation that ``spearmanr`` uses says p = 0 for three in the same order, where two pairings in six
    give |rho| = 1 by chance), the approximation beyond ``EXACT_UP_TO``."""
    import itertools

    import numpy as np
    from scipy.stats import rankdata, spearmanr

    res = spearmanr(x, y)
    rho = float(res.statistic)
    if len(x) > EXACT_UP_TO or not math.isfinite(rho):
        return rho, float(res.pvalue), "t approximation"
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    pairings = np.array(list(itertools.permutations(ry)))  # every pairing of y's ranks with x's
    rhos = pairings @ rx / (np.linalg.norm(rx) * np.linalg.norm(ry))
    return rho, float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12)), "exact"


def fidelity_table(trials: pd.DataFrame, nfe: int | None = None, alpha: float = 0.05) -> dict[str, Any] | None:
    """The screen-vs-full comparison at ``nfe`` (None: the study's NFE); None without full-length trials.

    Returns ``rows`` (per confirmed configuration, by full-length mean: ``config``, ``confirm_rank``,
    ``roles``, ``screen_trials``, ``screen_trial_fid`` (mean of those trials' FIDs), ``screen`` and ``full``
    (:func:`analysis.summary.group_stats` rows)), ``spearman`` (``rho``, ``p``, ``n``, ``method``: exact up to 8 configurations; None below n = 3),
    ``screen_winner``/``full_winner`` (labels), ``same_winner``, ``full_lowest`` (the lowest full-length
    mean, K = 1 included), ``headlines`` (``screen`` and ``full``: the contract's headline dicts with
    ``verdict``) and ``settings`` (``screen`` and ``full``: the training settings of each fidelity's trials).
    """
    recs = records(trials)
    default = main_nfe(trials)
    nfe = default if nfe is None else nfe
    full_recs = [r for r in recs if r.get("state") == "COMPLETE" and C.fidelity_of(r) == C.FULL
                 and C.nfe_of(r, default) == nfe and _num(r.get("value")) is not None]
    if not full_recs:
        return None
    values = {int(r["number"]): float(r["value"]) for r in recs if _num(r.get("value")) is not None}
    fids = {int(r["number"]): float(r["fid"]) for r in recs if _num(r.get("fid")) is not None}
    full_gs = C.groups(recs, nfe=nfe, fidelity=C.FULL, default_nfe=default)
    screen_gs = C.groups(recs, nfe=nfe, fidelity=C.SCREEN, default_nfe=default)
    rows = []
    for key, g in full_gs.items():
        mine = [r for r in full_recs if C.config_key(r) == key]
        # -1: confirmed without a screen trial of its own (a baseline the screen ran in another form)
        screen_trials = sorted({int(v) for r in mine if (v := _num(r.get(C.SCREEN_TRIAL))) is not None and v >= 0})
        ranks = [int(v) for r in mine if (v := _num(r.get(C.CONFIRM_RANK))) is not None]
        st_fids = [fids[t] for t in screen_trials if t in fids]
        rows.append({
            "config": g.label, "key": list(key), "confirm_rank": min(ranks) if ranks else None,
            "roles": sorted({str(r.get(C.ROLE)) for r in mine}), "screen_trials": screen_trials,
            "screen_trial_fid": sum(st_fids) / len(st_fids) if st_fids else None,
            "screen": group_stats(screen_gs.get(key), values), "full": group_stats(g, values),
        })
    rows.sort(key=lambda r: (r["full"]["mean"], r["config"]))
    pairs = [(r["screen"]["mean"], r["full"]["mean"]) for r in rows if r["screen"] is not None]
    spearman = None
    if len(pairs) >= 3:
        rho, p, method = _spearman([p[0] for p in pairs], [p[1] for p in pairs])
        spearman = {"rho": rho if math.isfinite(rho) else None, "p": p if math.isfinite(p) else None,
                    "n": len(pairs), "method": method}
    h_screen = C.headline(recs, nfe=nfe, fidelity=C.SCREEN, default_nfe=default, alpha=alpha)
    h_full = C.headline(recs, nfe=nfe, fidelity=C.FULL, default_nfe=default, alpha=alpha)
    sw = h_screen.best.label if h_screen.best else None
    fw = h_full.best.label if h_full.best else None
    lowest = min(full_gs.values(), key=lambda g: (g.mean, -g.n))
    headlines = {}
    for name, h in (("screen", h_screen), ("full", h_full)):
        headlines[name] = {"baseline": group_stats(h.baseline, values), "best": group_stats(h.best, values),
                           "candidates": h.candidates,
                           "comparison": h.improvement.as_dict() if h.improvement else None,
                           "verdict": h.improvement.verdict() if h.improvement else None}
    return {
        "nfe": nfe, "rows": rows, "spearman": spearman, "n_pairs": len(pairs),
        "screen_winner": sw, "full_winner": fw,
        "same_winner": (h_screen.best.key == h_full.best.key) if h_screen.best and h_full.best else None,
        "screen_winner_confirmed": bool(h_screen.best and h_screen.best.key in full_gs),
        "full_lowest": {"config": lowest.label, "mean": lowest.mean, "n": lowest.n},
        "headlines": headlines,
        "settings": {"screen": settings_for(trials, nfe=nfe, fidelity=C.SCREEN)["text"],
                     "full": settings_for(trials, nfe=nfe, fidelity=C.FULL)["text"]},
    }
