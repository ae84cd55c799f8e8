"""The relation between a and b among the best trials (the line the paper reads off its Figure 4).

With ``w_k = b exp(a k)`` the natural form is linear in ``ln b``::

    ln b = c0 + c1 a        (i.e. b = e^c0 exp(c1 a))

A ridge of constant endpoint weight ``w_K = b exp(a K)`` has slope ``c1 = -K``; a ridge of constant
first-branch weight has slope -1; a horizontal line (c1 = 0) means only the growth rate a matters. The fit is
ordinary least squares of ``ln b`` on ``a`` over the top quantile (lowest FID) of the completed trials with
K > 1 and a usable (a, b) (free-weight trials contribute their fitted pair). ``form="linear"`` fits
``b = c0 + c1 a`` instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from study import contract as C

FORMS = ("log-linear", "linear")


class ABFitError(ValueError):
    """Too few or degenerate trials to fit the a-b relation; the message says why in one line."""


@dataclass(frozen=True)
class ABFit:
    form: str
    c0: float
    c1: float
    r2: float
    n: int  # trials in the fit
    n_candidates: int  # trials the top quantile was taken from
    quantile: float
    K: int | None  # the K the fit is restricted to (None: all K > 1 pooled)
    nfe: int | None
    fid_threshold: float  # the worst FID inside the top quantile
    a_min: float
    a_max: float
    c1_se: float = float("nan")  # standard error of the slope (needs n >= 3)
    trial_numbers: tuple[int, ...] = field(default=())

    def predict_b(self, a):
        a = np.asarray(a, dtype=float)
        if self.form == "log-linear":
            return np.exp(self.c0 + self.c1 * a)
        return self.c0 + self.c1 * a

    @property
    def equation(self) -> str:
        sign = "-" if self.c1 < 0 else "+"
        if self.form == "log-linear":
            return f"ln b = {self.c0:.3g} {sign} {abs(self.c1):.3g}·a"
        return f"b = {self.c0:.3g} {sign} {abs(self.c1):.3g}·a"

    @property
    def equation_exp(self) -> str:
        """The same relation written for b (log-linear form only)."""
        if self.form != "log-linear":
            return self.equation
        return f"b = {math.exp(self.c0):.3g}·exp({self.c1:.3g}·a)"

    def label(self) -> str:
        k = f"K={self.K}, " if self.K is not None else "all K>1, "
        return f"top {self.quantile:.0%} fit ({k}n={self.n}): {self.equation}, R²={self.r2:.2f}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trial_numbers"] = list(self.trial_numbers)
        d["equation"] = self.equation
        d["equation_exp"] = self.equation_exp
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def main_nfe(trials: pd.DataFrame) -> int | None:
    """The NFE of the study's search: the study attribute if set, else the NFE most completed trials have."""
    nfe = trials.attrs.get("study", {}).get("nfe") if hasattr(trials, "attrs") else None
    if nfe is not None:
        try:
            return int(nfe)
        except (TypeError, ValueError):
            pass
    done = trials[trials["state"] == "COMPLETE"]["nfe"].dropna()
    if done.empty:
        return None
    counts = done.value_counts()
    return int(counts[counts == counts.max()].index.min())


def ab_candidates(trials: pd.DataFrame, nfe: int | None | str = "auto", fidelity: str | None = C.SCREEN) -> pd.DataFrame:
    """Completed trials with K > 1, a finite FID and a usable (a, b) at one NFE (``"auto"``: the study's) and
    one fidelity (default the screen: full-length confirmation trials have FIDs on another scale)."""
    df = trials[(trials["state"] == "COMPLETE")].copy()
    if fidelity is not None and len(df):
        df = df[[C.fidelity_of(r) == fidelity for r in df.to_dict("records")]]
    df = df[np.isfinite(df["value"].astype(float))]
    if "K" in df:
        df = df[df["K"].fillna(0).astype(int) > 1]
    a = df["a_eff"].astype(float)
    b = df["b_eff"].astype(float)
    df = df[np.isfinite(a) & np.isfinite(b) & (b > 0)]
    if nfe == "auto":
        nfe = main_nfe(trials)
    if nfe is not None and df["nfe"].notna().any():
        df = df[df["nfe"].fillna(nfe).astype(int) == int(nfe)]
    return df.sort_values([_by(df), "number"], kind="stable")


def _by(df: pd.DataFrame) -> str:
    """The column trials are ranked by here: their FID (the paper's ranking; a study that minimises KID still
    records every trial's FID), else the objective value."""
    return "fid" if "fid" in df and df["fid"].notna().all() else "value"


def top_quantile(candidates: pd.DataFrame, quantile: float, min_points: int = 3, by: str | None = None) -> pd.DataFrame:
    """The best ``ceil(quantile * n)`` rows by FID (at least ``min_points``, at most all); ``by``: the column
    to rank by (default: :func:`_by` of ``candidates``)."""
    n_top = max(min_points, math.ceil(quantile * len(candidates)))
    return candidates.sort_values([by or _by(candidates), "number"], kind="stable").head(n_top)


def fit_ab_relation(trials: pd.DataFrame, quantile: float = 0.25, form: str = "log-linear",
                    k: int | str | None = "auto", nfe: int | str | None = "auto", min_points: int = 3) -> ABFit:
    """Fit the a-b relation among the top ``quantile`` of trials by FID.

    ``k="auto"`` restricts the fit to the K of the best trial when the study has several K > 1 (the slope of a
    constant-endpoint-weight ridge depends on K), or pools every K > 1 when that K has fewer than
    ``min_points`` trials; an int picks that K; None pools every K > 1. ``nfe="auto"``
    uses the study's NFE so ablation trials at other NFEs do not mix in. Raises :class:`ABFitError` when fewer
    than ``min_points`` trials qualify or the top trials all share one a.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    cands = ab_candidates(trials, nfe)
    nfe_used = main_nfe(trials) if nfe == "auto" else nfe
    if k == "auto":
        ks = sorted(cands["K"].dropna().astype(int).unique())
        k = int(cands.iloc[0]["K"]) if len(ks) > 1 else (ks[0] if ks else None)
        if k is not None and len(ks) > 1 and int((cands["K"].astype(int) == k).sum()) < min_points:
            k = None  # too few at the best trial's K: pool every K > 1 rather than fit nothing
    if k is not None and not cands.empty:
        cands = cands[cands["K"].astype(int) == int(k)]
    if len(cands) < min_points:
        where = f" with K={k}" if k is not None else " with K>1"
        raise ABFitError(f"the a-b fit needs at least {min_points} completed trials{where} and an (a, b) schedule; "
                         f"found {len(cands)}")
    by = _by(cands)  # one column for the ranking and the threshold
    top = top_quantile(cands, quantile, min_points, by)
    a = top["a_eff"].astype(float).to_numpy()
    b = top["b_eff"].astype(float).to_numpy()
    if np.ptp(a) <= 1e-12:
        raise ABFitError(f"the top {len(top)} trials all have a = {a[0]:.3g}; the a-b relation cannot be fitted")
    y = np.log(b) if form == "log-linear" else b
    c1, c0 = np.polyfit(a, y, 1)
    resid = y - (c0 + c1 * a)
    ss_res = float(np.sum(resid**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("nan"))
    se = float("nan")
    if len(a) > 2:
        se = math.sqrt(ss_res / (len(a) - 2) / float(np.sum((a - a.mean()) ** 2)))
    return ABFit(form=form, c0=float(c0), c1=float(c1), r2=float(r2), n=len(top), n_candidates=len(cands),
                 quantile=float(quantile), K=int(k) if k is not None else None,
                 nfe=int(nfe_used) if nfe_used is not None else None,
                 fid_threshold=float(top[by].max()), a_min=float(a.min()), a_max=float(a.max()),
                 c1_se=se, trial_numbers=tuple(int(n) for n in top["number"]))
