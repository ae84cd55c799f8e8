"""Plain tables computed from the trials frame (no plotting): the headline comparison per NFE, ablation
tables, bootstrap confidence intervals.

Seeds are pooled per configuration: a configuration is (K, weights: a and b, or w1..wK), and its per-seed
FIDs are the ``fid_seeds`` of every completed trial with that configuration at that NFE (a trial without
``fid_seeds`` contributes its value as one seed). A seed run by several of those trials counts once, with
the mean of its FIDs (see :func:`pooled`). Means are over the distinct seeds; the spread is their sample
standard deviation (ddof = 1; undefined for one seed).

Headline per NFE:
- **K=1 baseline**: every completed K = 1 trial at that NFE, seeds pooled (the K = 1 loss has one weight, so
  all K = 1 trials are the same configuration up to a loss scale);
- **best B-DENSE**: the completed K > 1 trial with the lowest value at that NFE, and its configuration's
  seeds pooled over every trial that repeats it (ablation grids add fresh seeds). It is chosen on the same
  FIDs it reports, so it is optimistic when it comes from a search; ``--ablation nfe`` re-runs it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .fit import main_nfe


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    df = trials[trials["state"] == "COMPLETE"]
    return df[np.isfinite(df["value"].astype(float))]


def seed_fids(row: pd.Series) -> list[float]:
    """The trial's per-seed FIDs (its value alone when it has no ``fid_seeds``)."""
    fs = row.get("fid_seeds")
    if isinstance(fs, (list, tuple)) and fs:
        vals = [float(v) for v in fs if v is not None and math.isfinite(float(v))]
        if vals:
            return vals
    v = row.get("value")
    return [float(v)] if v is not None and math.isfinite(float(v)) else []


def _w_cols(df: pd.DataFrame) -> list[str]:
    return sorted((c for c in df.columns if c[:1] == "w" and c[1:].isdigit()), key=lambda c: int(c[1:]))


def config_key(row: pd.Series, w_cols: list[str] | None = None) -> tuple:
    """Identifies a configuration: (K, mode, rounded weights parameters)."""
    k = int(row["K"]) if pd.notna(row.get("K")) else None
    if k == 1:
        return (1,)
    w_cols = w_cols if w_cols is not None else [c for c in row.index if c[:1] == "w" and c[1:].isdigit()]
    ws = tuple(round(float(row[c]), 6) for c in w_cols if pd.notna(row.get(c)))
    if row.get("weights_mode") == "free" and ws:
        return (k, "free", ws)
    a, b = row.get("a_eff"), row.get("b_eff")
    return (k, "exp", round(float(a), 6) if pd.notna(a) else None, round(float(b), 6) if pd.notna(b) else None)


def is_uniform(row: pd.Series) -> bool:
    """K > 1 with equal weights: a = 0 for exponential weights, all w_k equal for free ones."""
    if pd.isna(row.get("K")) or int(row["K"]) <= 1:
        return False
    if row.get("role") == "baseline-uniform":
        return True
    if row.get("weights_mode") == "free":
        ws = [float(row[f"w{i}"]) for i in range(1, int(row["K"]) + 1) if pd.notna(row.get(f"w{i}"))]
        return len(ws) == int(row["K"]) and max(ws) - min(ws) <= 1e-9 * max(abs(max(ws)), 1.0)
    a = row.get("a_eff")
    return pd.notna(a) and abs(float(a)) < 1e-12


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def describe_config(row: pd.Series) -> str:
    """``K=4, a=0.31, b=0.042`` (``K=1`` for the baseline; fitted pair marked for free weights)."""
    k = int(row["K"]) if pd.notna(row.get("K")) else None
    if k == 1:
        return "K=1"
    a, b = row.get("a_eff"), row.get("b_eff")
    ab = f"a={_fmt(float(a))}, b={_fmt(float(b))}" if pd.notna(a) and pd.notna(b) else "weights n/a"
    if row.get("weights_mode") == "free":
        ab = "free weights, fitted " + ab
    return f"K={k}, {ab}" if k is not None else ab


def seed_pairs(row: pd.Series) -> list[tuple[Any, float]]:
    """(seed, FID) pairs of a trial; the seed is ``(trial number, i)`` when the trial does not list its seeds."""
    fids = seed_fids(row)
    seeds = row.get("seeds")
    fs = row.get("fid_seeds")
    if (isinstance(seeds, (list, tuple)) and isinstance(fs, (list, tuple)) and len(seeds) == len(fs)
            and len(fids) == len(fs)):
        return [(int(sd) if isinstance(sd, (int, np.integer)) else sd, f) for sd, f in zip(seeds, fids)]
    return [((int(row["number"]), i), f) for i, f in enumerate(fids)]


def pooled(rows: pd.DataFrame) -> dict[str, Any]:
    """Mean, spread and counts of the per-seed FIDs of ``rows`` (trials of one configuration).

    A seed that several trials ran (a repeated configuration with the same seed) counts once, with the mean
    of its FIDs: repeats of one seed are not independent samples, and counting them twice would shrink the
    spread. ``n_seeds`` is the number of distinct seeds, ``n_runs`` the number of (trial, seed) runs.
    """
    by_seed: dict[Any, list[float]] = {}
    for _, r in rows.iterrows():
        for seed, f in seed_pairs(r):
            by_seed.setdefault(seed, []).append(f)
    fids = [float(np.mean(v)) for v in by_seed.values()]
    arr = np.asarray(fids, dtype=float)
    return {
        "mean": float(arr.mean()) if arr.size else float("nan"),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
        "min": float(arr.min()) if arr.size else float("nan"),
        "max": float(arr.max()) if arr.size else float("nan"),
        "n_seeds": int(arr.size),
        "n_runs": int(sum(len(v) for v in by_seed.values())),
        "n_trials": int(len(rows)),
        "fids": [float(v) for v in arr],
        "trial_numbers": [int(n) for n in rows["number"]],
    }


def _nfe_values(done: pd.DataFrame, trials: pd.DataFrame) -> pd.Series:
    fallback = main_nfe(trials)
    nfe = done["nfe"]
    if fallback is not None:
        nfe = nfe.fillna(fallback)
    return nfe


def headline(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Baseline vs best B-DENSE per NFE (sorted by NFE); see the module docstring for the rules."""
    done = completed(trials).copy()
    if done.empty:
        return []
    done["_nfe"] = _nfe_values(done, trials)
    w_cols = _w_cols(done)
    done["_cfg"] = [config_key(r, w_cols) for _, r in done.iterrows()]
    out = []
    nfes = sorted(int(v) for v in done["_nfe"].dropna().unique())
    for nfe in nfes:
        at = done[(done["_nfe"] == nfe).fillna(False).astype(bool)]
        k = at["K"].fillna(0).astype(int)
        base_rows = at[k == 1]
        bd_rows = at[k > 1]
        row: dict[str, Any] = {"nfe": nfe, "baseline": None, "bdense": None, "delta": None, "delta_pct": None}
        if not base_rows.empty:
            row["baseline"] = pooled(base_rows)
        if not bd_rows.empty:
            best = bd_rows.sort_values(["value", "number"], kind="stable").iloc[0]
            same = bd_rows[bd_rows["_cfg"] == best["_cfg"]]
            stats = pooled(same)
            stats.update({
                "trial_number": int(best["number"]), "K": int(best["K"]),
                "a": float(best["a_eff"]) if pd.notna(best["a_eff"]) else None,
                "b": float(best["b_eff"]) if pd.notna(best["b_eff"]) else None,
                "weights_mode": best.get("weights_mode"), "config": describe_config(best),
                "trial_value": float(best["value"]),
            })
            row["bdense"] = stats
        if row["baseline"] and row["bdense"]:
            d = row["baseline"]["mean"] - row["bdense"]["mean"]
            row["delta"] = d
            row["delta_pct"] = 100.0 * d / row["baseline"]["mean"] if row["baseline"]["mean"] else None
        out.append(row)
    return out


def uniform_baseline(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Uniform weights (a = 0, K > 1) per NFE and K, seeds pooled."""
    done = completed(trials).copy()
    if done.empty:
        return []
    done["_nfe"] = _nfe_values(done, trials)
    uni = done[pd.Series([is_uniform(r) for _, r in done.iterrows()], index=done.index, dtype=bool)]
    out = []
    for (nfe, kk), rows in uni.groupby([uni["_nfe"], uni["K"].astype(int)], sort=True):
        stats = pooled(rows)
        stats.update({"nfe": int(nfe), "K": int(kk)})
        out.append(stats)
    return out


def ablation_names(trials: pd.DataFrame) -> list[str]:
    roles = trials["role"].dropna().astype(str)
    return sorted({r.split(":", 1)[1] for r in roles if r.startswith("ablation:")})


def ablation_table(trials: pd.DataFrame, name: str) -> pd.DataFrame:
    """One row per configuration of ablation ``name`` (completed trials), seeds pooled.

    Columns: ``config``, ``K``, ``a``, ``b``, ``nfe``, ``mean``, ``std``, ``n_seeds``, ``n_trials``, ``fids``.
    Sorted by NFE, then K, then a.
    """
    done = completed(trials).copy()
    done = done[done["role"] == f"ablation:{name}"]
    cols = ["config", "K", "a", "b", "nfe", "mean", "std", "n_seeds", "n_trials", "fids"]
    if done.empty:
        return pd.DataFrame(columns=cols)
    done["_nfe"] = _nfe_values(done, trials)
    w_cols = _w_cols(done)
    done["_cfg"] = [config_key(r, w_cols) + (int(n) if pd.notna(n) else None,) for (_, r), n in
                    zip(done.iterrows(), done["_nfe"])]
    rows = []
    for _, grp in done.groupby("_cfg", sort=False):
        first = grp.iloc[0]
        st = pooled(grp)
        rows.append({
            "config": describe_config(first), "K": int(first["K"]) if pd.notna(first["K"]) else None,
            "a": float(first["a_eff"]) if pd.notna(first["a_eff"]) else float("nan"),
            "b": float(first["b_eff"]) if pd.notna(first["b_eff"]) else float("nan"),
            "nfe": int(first["_nfe"]) if pd.notna(first["_nfe"]) else None,
            "mean": st["mean"], "std": st["std"], "n_seeds": st["n_seeds"], "n_trials": st["n_trials"],
            "fids": st["fids"],
        })
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["nfe", "K", "a"], na_position="last", kind="stable").reset_index(drop=True)


def bootstrap_ci(values, ci: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (a single value gives (v, v); none gives NaNs)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n_boot, x.size), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


def pick_curve_trials(trials: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """Trials worth showing loss curves for: best B-DENSE, best K=1 baseline, best uniform, then the next best.

    Only completed trials at the study's NFE with an MLflow run id; at most ``n`` rows, in that order.
    """
    done = completed(trials)
    done = done[done["mlflow_run_id"].map(lambda r: isinstance(r, str) and bool(r))]
    nfe = main_nfe(trials)
    if nfe is not None:
        done = done[done["nfe"].fillna(nfe).astype(int) == nfe]
    done = done.sort_values(["value", "number"], kind="stable")
    k = done["K"].fillna(0).astype(int)
    picks: list[int] = []
    uniform = pd.Series([is_uniform(r) for _, r in done.iterrows()], index=done.index, dtype=bool)
    for subset in (done[k > 1], done[k == 1], done[uniform], done[k > 1]):
        for idx in subset.index:
            if idx not in picks:
                picks.append(idx)
                break
    for idx in done.index:  # top up when some groups were empty
        if len(picks) >= n:
            break
        if idx not in picks:
            picks.append(idx)
    return done.loc[picks[:n]]


def state_counts(trials: pd.DataFrame) -> dict[str, int]:
    return {str(k).lower(): int(v) for k, v in trials["state"].value_counts().sort_index().items()}
