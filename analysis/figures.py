"""Figures of a study, each a matplotlib ``Figure`` saved as PNG and SVG by :func:`save_figure`.

Every ``plot_*`` function either returns a figure with data in it or raises :class:`NotEnoughData` with a
one-line reason before drawing anything, so no caller ever saves an empty figure. The functions build
``matplotlib.figure.Figure`` objects directly (no pyplot state, any backend; the report uses Agg), except the
two Optuna plots, which are Optuna's own functions and therefore pyplot figures (closed by
:func:`save_figure`).

- :func:`plot_ab_vs_fid`            Figure 4 of the paper: (a, b) coloured by FID + the top trials sorted by FID
- :func:`plot_fid_vs_k`             every trial's FID by K, with the per-K mean and a bootstrap 95% CI
- :func:`plot_baseline_vs_bdense`   K = 1 baseline vs best B-DENSE per NFE, mean and spread over seeds
- :func:`plot_branch_losses`        per-branch training loss of chosen trials (MLflow histories)
- :func:`plot_optimization_history` / :func:`plot_param_importances`   Optuna's plots
- :func:`plot_ablation`             one designed grid (``k``, ``schedule``, ``nfe``, ``b``): FID per configuration
- :func:`plot_fidelity`             screen FID vs full-length FID of the confirmed configurations

Noise is drawn wherever there is one: the K = 1 replicate band (mean +- s.d. of the K = 1 runs) and the
configurations that differ from K = 1 beyond noise by the study contract's test (``study/contract.py``), with
the number of comparisons in the legend.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import matplotlib
import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from study import contract as C

from .ablation import runs_at_nfe
from .fit import ABFit, ABFitError, ab_candidates, fit_ab_relation, main_nfe
from .summary import (ablation_table, bootstrap_ci, completed, configurations, describe_config, headline,
                      replicate_band, uniform_baseline)

FORMATS = ("png", "svg")
DPI = 150
CMAP = "viridis"  # low FID dark, high FID light: the good trials stand out on white
BASELINE_COLOR = "#444444"
BDENSE_COLOR = "#c2185b"
ROLE_COLORS = {"search": "#1f77b4", "baseline": "#444444", "ablation": "#ff7f0e"}


class NotEnoughData(ValueError):
    """The data cannot make this figure; the message (one line) says why. Nothing was drawn."""


@contextmanager
def style() -> Iterator[None]:
    """Seaborn's whitegrid look, readable font sizes; restores matplotlib's settings afterwards."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook")}
    rc.update({"axes.titleweight": "bold", "axes.titlesize": 13, "figure.titlesize": 15,
               "figure.titleweight": "bold", "legend.framealpha": 0.9})
    with matplotlib.rc_context(rc):
        yield


def add_footer(fig, text: str, fontsize: float = 8) -> None:
    """``text`` in small grey type under the figure, wrapped to its width (``save_figure``'s tight bounding box
    keeps it): the report writes there what the figure rests on (training length, seeds, samples, machines)."""
    import textwrap

    width = max(40, int(fig.get_size_inches()[0] * 72 / (fontsize * 0.55)))
    fig.text(0.0, 0.0, textwrap.fill(text, width), ha="left", va="top", fontsize=fontsize, color="0.35",
             transform=fig.transFigure)


def save_figure(fig, out_dir: str | Path, name: str, formats: Sequence[str] = FORMATS,
                close: bool = True) -> list[Path]:
    """Save ``fig`` as ``out_dir/name.png`` and ``.svg``; returns the paths. Closes pyplot figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, format=fmt, dpi=DPI, bbox_inches="tight", facecolor="white")
        paths.append(path)
    if close and "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return paths


# ------------------------------------------------------------------------------------------- helpers
def _plain_log_axis(ax, axis: str = "y") -> None:
    """Log-axis tick labels as plain numbers (0.5, 2, 100) instead of 5x10^-1; minor labels only when the
    axis spans less than a decade (else they crowd)."""
    from matplotlib import ticker

    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = (ax.get_ylim() if axis == "y" else ax.get_xlim())
    fmt = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    a.set_major_formatter(fmt)
    if lo > 0 and hi / lo < 10:
        a.set_minor_formatter(fmt)
    else:
        a.set_minor_formatter(ticker.NullFormatter())


def _study(trials: pd.DataFrame) -> dict[str, Any]:
    return dict(trials.attrs.get("study", {})) if hasattr(trials, "attrs") else {}


def fid_label(trials: pd.DataFrame | None = None, extra: str = "") -> str:
    n = _study(trials).get("fid_samples") if trials is not None else None
    samples = f"{int(n)} samples, " if n else ""
    return f"FID ({samples}lower is better){extra}"


def _study_tag(trials: pd.DataFrame, nfe: int | None = None) -> str:
    s = _study(trials)
    parts = []
    if s.get("study_name"):
        parts.append(f"study '{s['study_name']}'")
    if s.get("framework"):
        parts.append(str(s["framework"]).upper())
    if nfe is not None:
        parts.append(f"NFE={nfe}")
    return ", ".join(parts)


def _fid_norm(values: np.ndarray) -> tuple[mcolors.Normalize, str]:
    """Colour scale for FIDs: min..max, or min..95th percentile when a few diverged trials would squash it."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = float(v.min()), float(v.max())
    extend = "neither"
    if v.size >= 10:
        q95 = float(np.percentile(v, 95))
        if hi - q95 > 0.5 * (q95 - lo) and q95 > lo:
            hi, extend = q95, "max"
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    if lo > 0 and hi / lo > 3:  # a wide range (diverged trials): a log scale keeps the good ones apart
        return mcolors.LogNorm(vmin=lo, vmax=hi), extend
    return mcolors.Normalize(vmin=lo, vmax=hi), extend


def _at_nfe(df: pd.DataFrame, nfe: int | None) -> pd.DataFrame:
    if nfe is None or not df["nfe"].notna().any():
        return df
    return df[df["nfe"].fillna(nfe).astype(int) == int(nfe)]


def _screen(df: pd.DataFrame) -> pd.DataFrame:
    """The screen's rows (trials without a ``fidelity`` count as screen)."""
    if df.empty:
        return df
    return df[[C.fidelity_of(r) == C.SCREEN for r in df.to_dict("records")]]


def _role_group(role: Any) -> str:
    r = str(role or "search")
    if r.startswith("baseline"):
        return "baseline"
    if r.startswith("ablation"):
        return "ablation"
    return "search"


def _natural_key(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


MARK_LOWER = "▼"  # differs from K = 1 beyond noise, lower FID
MARK_HIGHER = "▲"  # differs from K = 1 beyond noise, higher FID


def noise_mark(direction: str) -> str:
    """The table/figure mark of a configuration's comparison with K = 1 (``""`` within noise)."""
    return MARK_LOWER if direction == "lower" else MARK_HIGHER if direction == "higher" else ""


def _ranking_panel(ax, trials: pd.DataFrame, ranked: pd.DataFrame, nfe: int | None, top_n: int, norm, cmap,
                   multi_k: bool) -> None:
    """Figure 4's right panel: the best configurations with their spread, the K = 1 band and noise marks."""
    top = ranked.head(top_n)
    y = np.arange(len(top))
    sd = np.where(np.isfinite(top["std"].astype(float)), top["std"].astype(float), 0.0)
    ax.errorbar(top["mean"], y, xerr=sd, fmt="none", ecolor="0.45", capsize=3, lw=1.2, zorder=1)
    ax.scatter(top["mean"], y, c=top["mean"], cmap=cmap, norm=norm, s=80, edgecolors="black", linewidths=0.5,
               zorder=2)
    band = replicate_band(trials, nfe, C.SCREEN)
    if band and math.isfinite(band["sd"]):
        ax.axvspan(band["mean"] - band["sd"], band["mean"] + band["sd"], color=BASELINE_COLOR, alpha=0.13, lw=0,
                   zorder=0, label=f"K=1 replicates: {band['mean']:.3g} ± {band['sd']:.2g} s.d. "
                                   f"({band['n_runs']} runs, {band['n_seeds']} seeds; {band['min']:.3g}–{band['max']:.3g})")
        ax.axvline(band["mean"], color=BASELINE_COLOR, ls="--", lw=1.3)
    elif band:  # one K=1 run: a line, and no band to judge the ranking's differences by
        ax.axvline(band["mean"], color=BASELINE_COLOR, ls="--", lw=1.3,
                   label=f"K=1: {band['mean']:.3g} (one run: no noise band; replicate K=1 to get one)")
    for u in uniform_baseline(trials, fidelity=C.SCREEN):
        if u["nfe"] == nfe:
            ax.axvline(u["mean"], color="0.55", ls=":", lw=1.5, label=f"uniform a=0, K={u['K']}: {u['mean']:.3g}")
    labels = []
    for r in top.itertuples():
        k_txt = f", K={int(r.K)}" if multi_k else ""
        ab = f"a={r.a:.3g}, b={r.b:.3g}" if r.a is not None and r.b is not None else r.config
        seeds = f" [{r.n_seeds} seeds]" if r.n_seeds > 1 else ""
        mark = noise_mark(r.direction)
        labels.append(f"{mark + ' ' if mark else ''}#{r.rank}  {ab}{k_txt}{seeds}")
    ax.set_yticks(y, labels)
    ax.set_ylim(len(top) - 0.5, -0.5)
    m = int(ranked["comparisons"].max()) if len(ranked) and ranked["comparisons"].notna().any() else 0
    n_low = int((ranked["direction"] == "lower").sum()) if len(ranked) else 0
    n_high = int((ranked["direction"] == "higher").sum()) if len(ranked) else 0
    if m:
        ax.plot([], [], ls="none", label=f"{MARK_LOWER}/{MARK_HIGHER}: lower/higher FID than K=1 beyond noise "
                                         f"({n_low}/{n_high} of {m}; Bonferroni over {m} comparisons)")
    ax.set_xlabel(fid_label(trials, ", mean over seeds ± s.d."))
    ax.set_title(f"Top {len(top)} of {len(ranked)} configurations, by ascending FID")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8.5, frameon=False)


# -------------------------------------------------------------------------------- (a) Figure 4
def plot_ab_vs_fid(trials: pd.DataFrame, fit: ABFit | None | str = "auto", *, quantile: float = 0.25,
                   top_n: int = 15, mark_best: int = 5, title: str | None = None) -> Figure:
    """The paper's Figure 4: branch-weight schedules (a, b) coloured by FID, and the best ones sorted by FID.

    Left: every completed K > 1 trial at the study's NFE as a point in (a, b) (b on a log axis) coloured by
    FID, the ``mark_best`` best circled and ranked, and the a-b relation fitted among the top ``quantile``
    (``fit="auto"`` fits it here; pass an :class:`ABFit` or None) drawn with its equation in the legend.
    Right: the ``top_n`` best configurations of the screen (the contract's ranking: mean FID over seeds),
    each with its seeds' s.d. where it has two or more, the K = 1 replicate band (mean +- s.d. of the K = 1
    runs) and the uniform baseline; configurations that differ from K = 1 beyond noise by the contract's
    test are marked (▼ lower FID, ▲ higher), the number of comparisons in the legend. The circled, ranked
    points on the left are the same ranking's best ``mark_best`` configurations (their best trial).
    """
    cands = ab_candidates(trials)
    nfe = main_nfe(trials)
    if cands.empty:
        raise NotEnoughData("the (a, b) figure needs completed trials with K > 1 and an (a, b) schedule; none found")
    fit_note = None
    if isinstance(fit, str):
        try:
            fit = fit_ab_relation(trials, quantile=quantile)
        except ABFitError as exc:
            fit, fit_note = None, str(exc)
    cmap = matplotlib.colormaps[CMAP]
    norm, extend = _fid_norm(cands["value"].to_numpy(float))
    ks = sorted(int(k) for k in cands["K"].unique())
    markers = dict(zip(ks, "osD^vPX*"))
    with style():
        fig = Figure(figsize=(15, 6.6), layout="constrained")
        ax, axr = fig.subplots(1, 2, width_ratios=[1.25, 1])
        worst_first = cands.sort_values("value", ascending=False, kind="stable")
        for k in ks:
            sub = worst_first[worst_first["K"].astype(int) == k]
            ax.scatter(sub["a_eff"], sub["b_eff"], c=sub["value"], cmap=cmap, norm=norm, marker=markers[k], s=60,
                       edgecolors="white", linewidths=0.6, zorder=2)
            ax.scatter([], [], marker=markers[k], s=60, color="0.55",
                       label=f"trials with K={k} (n={len(sub)})")  # a neutral legend entry
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, extend=extend, pad=0.01)
        cb.set_label(fid_label(trials))
        ranked = configurations(trials, nfe=nfe, fidelity=C.SCREEN)
        where = cands.set_index("number")[["a_eff", "b_eff"]]
        best = where.loc[[int(t) for t in ranked["trial_number"].head(mark_best) if int(t) in where.index]]
        ax.scatter(best["a_eff"], best["b_eff"], s=230, facecolors="none", edgecolors="crimson", linewidths=1.8,
                   zorder=3, label=f"best {len(best)} (ranked)")
        for rank, (_, r) in enumerate(best.iterrows(), 1):
            ax.annotate(str(rank), (r["a_eff"], r["b_eff"]), xytext=(8, 6), textcoords="offset points",
                        color="crimson", fontweight="bold", fontsize=11, zorder=4)
        if fit is not None:
            pad = 0.05 * max(fit.a_max - fit.a_min, 1e-9)
            xs = np.linspace(fit.a_min - pad, fit.a_max + pad, 200)
            ys = fit.predict_b(xs)
            ok = ys > 0
            ax.plot(xs[ok], ys[ok], color="crimson", ls="--", lw=2.2, zorder=3, label=fit.label())
        elif fit_note:
            ax.text(0.01, 0.01, f"no a-b fit: {fit_note}", transform=ax.transAxes, fontsize=9, color="0.3",
                    va="bottom", ha="left", wrap=True)
        ax.set_yscale("log")
        _plain_log_axis(ax)
        ax.set_xlabel("a: growth rate of $w_k = b\\,e^{a k}$  [per branch]")
        ax.set_ylabel("b: intercept weight  [dimensionless, log scale]")
        ax.set_title("Branch-weight schedules coloured by FID")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=9, frameon=False)

        _ranking_panel(axr, trials, ranked, nfe, top_n, norm, cmap, multi_k=len(ks) > 1)
        fig.suptitle(title or f"B-DENSE branch weights vs FID ({_study_tag(trials, nfe)})")
    return fig


# -------------------------------------------------------------------------------- (b) FID vs K
def plot_fid_vs_k(trials: pd.DataFrame, ci: float = 0.95, n_boot: int = 2000, title: str | None = None) -> Figure:
    """Every completed screen trial's FID by K (at the study's NFE) with the per-K mean and a bootstrap CI,
    and the K = 1 replicate band (mean ± s.d. of the K = 1 runs) across the plot."""
    nfe = main_nfe(trials)
    done = _at_nfe(_screen(completed(trials)), nfe)
    done = done[done["K"].notna()]
    if done.empty:
        raise NotEnoughData("FID vs K needs completed trials with a K; none found")
    ks = sorted(int(k) for k in done["K"].unique())
    data = pd.DataFrame({"K": done["K"].astype(int).astype(str), "FID": done["value"].astype(float),
                         "role": done["role"].map(_role_group)})
    hue_order = [r for r in ROLE_COLORS if r in set(data["role"])]
    with style():
        fig = Figure(figsize=(max(7.0, 1.6 * len(ks) + 4), 5.6), layout="constrained")
        ax = fig.subplots()
        sns.stripplot(data=data, x="K", y="FID", hue="role", order=[str(k) for k in ks], hue_order=hue_order,
                      palette=ROLE_COLORS, jitter=0.22, size=6, alpha=0.7, ax=ax, zorder=1)
        means, lo, hi, counts = [], [], [], []
        for k in ks:
            v = data.loc[data["K"] == str(k), "FID"].to_numpy()
            means.append(v.mean())
            a, b = bootstrap_ci(v, ci=ci, n_boot=n_boot)
            lo.append(a)
            hi.append(b)
            counts.append(len(v))
        pos = np.arange(len(ks))
        means, lo, hi = np.array(means), np.array(lo), np.array(hi)
        ax.errorbar(pos + 0.32, means, yerr=[means - lo, hi - means], fmt="D", color="black", ms=8, capsize=7,
                    lw=2, zorder=3, label=f"mean, {ci:.0%} bootstrap CI")
        band = replicate_band(trials, nfe, C.SCREEN)
        if band and math.isfinite(band["sd"]):
            ax.axhspan(band["mean"] - band["sd"], band["mean"] + band["sd"], color=BASELINE_COLOR, alpha=0.12,
                       lw=0, zorder=0, label=f"K=1 replicates ± s.d. ({band['n_runs']} runs)")
        ax.set_xticks(pos, [f"K={k}\n(n={n})" for k, n in zip(ks, counts)])
        ax.set_xlabel("number of branches K  (K=1: plain endpoint distillation)")
        fids = data["FID"].to_numpy()
        if fids.min() > 0 and fids.max() / fids.min() > 4:
            ax.set_yscale("log")
            _plain_log_axis(ax)
        ax.set_ylabel(fid_label(trials, ", log scale" if ax.get_yscale() == "log" else ""))
        ax.set_title(title or f"FID vs number of branches K ({_study_tag(trials, nfe)})")
        ax.legend(loc="best", fontsize=9, title="trial role", title_fontsize=9)
    return fig


# ------------------------------------------------------------------------ (c) baseline vs B-DENSE
def _short_verdict(row: dict[str, Any]) -> str:
    c = row.get("comparison")
    if not c:
        return ""
    if c["method"] == "none":
        return "no spread to judge"
    word = "beyond noise" if c["beyond_noise"] else "within noise"
    return f"Δ {c['delta']:+.3g}, p = {c['p']:.2g} ({c['comparisons']} comp.): {word}"


def plot_baseline_vs_bdense(trials: pd.DataFrame, title: str | None = None) -> Figure:
    """K = 1 baseline vs the best B-DENSE configuration at each NFE (the contract's headline, at the study's
    headline fidelity): every seed's FID, mean ± s.d., and the contract's verdict under each pair."""
    rows = [r for r in headline(trials) if r["baseline"] or r["bdense"]]
    if not rows:
        raise NotEnoughData("baseline vs B-DENSE needs completed trials; none found")
    rng = np.random.default_rng(0)
    with style():
        fig = Figure(figsize=(max(8.0, 1.8 * len(rows) + 5), 5.8), layout="constrained")
        ax = fig.subplots()
        for key, label, color, off in (("baseline", "K=1 baseline", BASELINE_COLOR, -0.1),
                                       ("bdense", "best B-DENSE", BDENSE_COLOR, 0.1)):
            xs, ms, sds = [], [], []
            for r in rows:
                s = r[key]
                if not s:
                    continue
                x = r["nfe"] + off
                f = np.asarray(s["fids"], dtype=float)
                ax.scatter(x + rng.uniform(-0.03, 0.03, f.size), f, color=color, alpha=0.45, s=24, zorder=2)
                xs.append(x)
                ms.append(s["mean"])
                sds.append(s["std"] if s["std"] is not None and math.isfinite(s["std"]) else 0.0)
                if key == "bdense":
                    verdict = _short_verdict(r)
                    ax.annotate(f"{s['config']}\n({s['n_seeds']} seeds)" + (f"\n{verdict}" if verdict else ""),
                                (x, s["mean"]), xytext=(12, -10), textcoords="offset points", fontsize=8,
                                color=color, va="top")
                else:
                    ax.annotate(f"{s['n_seeds']} seeds", (x, s["mean"]), xytext=(-16, 6), ha="right",
                                textcoords="offset points", fontsize=8, color=color)
            if xs:
                ax.errorbar(xs, ms, yerr=sds, fmt="o-" if len(xs) > 1 else "o", color=color, ms=9, capsize=6,
                            lw=2, zorder=3, label=f"{label}: mean ± s.d. over seeds (dots: seeds)")
        nfes = [r["nfe"] for r in rows]
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.set_xlim(min(nfes) - 0.6, max(nfes) + 0.9)
        ax.set_xlabel("NFE  [network evaluations per sample]")
        ax.set_ylabel(fid_label(trials))
        fid = rows[0].get("fidelity") or C.SCREEN
        ax.set_title(title or f"B-DENSE vs K=1 baseline per NFE ({_study_tag(trials)}, {fid} trials)")
        ax.legend(loc="best", fontsize=9)
    return fig


# ---------------------------------------------------------------------------- (d) branch losses
def plot_branch_losses(histories: pd.DataFrame | None, trials: pd.DataFrame | None = None, max_panels: int = 4,
                       title: str | None = None) -> Figure:
    """Per-branch training loss (``loss_branch_k``) and the weighted total (``loss``) of each run.

    ``histories`` is :func:`analysis.load.load_metric_histories`'s long frame; ``trials`` (optional) labels
    the panels with each trial's configuration and FID. One panel per run, at most ``max_panels``.
    """
    if histories is None or histories.empty:
        raise NotEnoughData("no per-step loss histories in MLflow for the chosen trials")
    h = histories[histories["key"].str.fullmatch(r"loss|loss_branch_\d+")]
    if h.empty:
        raise NotEnoughData("the chosen MLflow runs have no 'loss' or 'loss_branch_k' metrics")
    runs = list(dict.fromkeys(h["run_id"]))[:max_panels]
    by_run = {}
    if trials is not None and "mlflow_run_id" in trials:
        by_run = {r["mlflow_run_id"]: r for _, r in trials.iterrows() if isinstance(r["mlflow_run_id"], str)}
    with style():
        fig = Figure(figsize=(5.4 * len(runs) + 0.6, 4.9), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(runs), squeeze=False)[0])
        for ax, run in zip(axes, runs):
            hr = h[h["run_id"] == run]
            bkeys = sorted((k for k in hr["key"].unique() if k.startswith("loss_branch_")), key=_natural_key)
            palette = sns.color_palette("crest", max(len(bkeys), 1))
            for i, (color, key) in enumerate(zip(palette, bkeys)):
                d = hr[hr["key"] == key]
                idx = key.rsplit("_", 1)[1]
                end = " (endpoint)" if i == len(bkeys) - 1 and len(bkeys) > 1 else ""
                ax.plot(d["step"], d["value"], color=color, lw=1.7, label=f"branch {idx}{end}")
            d = hr[hr["key"] == "loss"]
            if not d.empty:
                ax.plot(d["step"], d["value"], color="black", ls="--", lw=1.4, label="total (weighted sum)")
            if (hr["value"] > 0).all():
                ax.set_yscale("log")
                _plain_log_axis(ax)
            row = by_run.get(run)
            if row is not None:
                ax.set_title(f"trial {int(row['number'])}: {describe_config(row)}\nFID {row['value']:.3g}",
                             fontsize=11)
            else:
                tn = hr["trial_number"].dropna()
                ax.set_title(f"trial {int(tn.iloc[0])}" if len(tn) else f"run {run[:8]}", fontsize=11)
            ax.set_xlabel("training step")
            ax.set_ylabel("distillation loss  [framework distance]")
            ax.legend(fontsize=8, loc="best")
        fig.suptitle(title or "Per-branch distillation loss during training")
    return fig


# ------------------------------------------------------------------------------- (e) Optuna's plots
@contextmanager
def _quiet_optuna() -> Iterator[None]:
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(old)


def search_view(study: optuna.Study, nfe: int | None | str = "auto") -> tuple[optuna.Study, int | None]:
    """An in-memory copy of ``study`` holding its completed screen trials at one NFE (``"auto"``: the study's).

    Ablation trials at other NFEs and full-length confirmation trials have FIDs on another scale; leaving
    them out keeps Optuna's history and importances about the search itself.
    """
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if nfe == "auto":
        nfe = study.user_attrs.get("nfe")
        if nfe is None:
            vals = [t.user_attrs.get("nfe") for t in trials if t.user_attrs.get("nfe") is not None]
            nfe = max(set(vals), key=vals.count) if vals else None
    trials = [t for t in trials if runs_at_nfe(t, nfe) and C.fidelity_of(t.user_attrs) == C.SCREEN]
    with _quiet_optuna():
        view = optuna.create_study(direction=study.direction, study_name=study.study_name)
        view.add_trials(trials)
    return view, (int(nfe) if nfe is not None else None)


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_optimization_history(study: optuna.Study, nfe: int | None | str = "auto") -> Figure:
    """Optuna's ``plot_optimization_history`` of the completed trials at the study's NFE (needs 2 or more)."""
    view, nfe = search_view(study, nfe)
    n = len(view.trials)
    if n < 2:
        raise NotEnoughData(f"the optimisation history needs at least 2 completed trials at NFE={nfe}; found {n}")
    n_done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    whole = n == n_done  # nothing filtered out: plot the study itself, so the x axis is the real trial number
    from optuna.visualization import matplotlib as ovm

    plt = _pyplot()
    with _quiet_optuna(), plt.rc_context():  # optuna switches to the ggplot style; keep that local
        ax = ovm.plot_optimization_history(study if whole else view, target_name="FID")
        fig = ax.figure
        fig.set_size_inches(9.5, 5.4)
        ax.set_title("", loc="left")
        ax.set_title(f"Optimisation history: study '{study.study_name}', NFE={nfe}, {n} completed trials",
                     fontsize=12, fontweight="bold")
        ax.set_xlabel("trial number" if whole else
                      f"completed trial at NFE={nfe}, in order ({n_done - n} at other NFEs left out)")
        ax.set_ylabel("FID (objective, lower is better)")
        fig.tight_layout()
    return fig


def importance_params(view: optuna.Study) -> tuple[list[str], int]:
    """Params for the importance plot: those in at least half the completed trials that vary, shrunk until
    at least 2 trials hold all of them. Returns (params, number of trials holding all of them)."""
    trials = view.trials
    counts: dict[str, int] = {}
    for t in trials:
        for p in t.params:
            counts[p] = counts.get(p, 0) + 1
    params = [p for p, c in sorted(counts.items(), key=lambda kv: (-kv[1], _natural_key(kv[0])))
              if c * 2 >= len(trials) and len({repr(t.params[p]) for t in trials if p in t.params}) > 1]
    while params:
        holding = [t for t in trials if all(p in t.params for p in params)]
        if len(holding) >= 2:
            return params, len(holding)
        params = params[:-1]
    return [], 0


def plot_param_importances(study: optuna.Study, nfe: int | None | str = "auto") -> Figure:
    """Optuna's ``plot_param_importances`` (PED-ANOVA by default in Optuna 5) over the varying parameters.

    Skipped (NotEnoughData) with fewer than 2 completed trials or fewer than 2 parameters that vary: an
    importance of 100% for a single parameter says nothing.
    """
    view, nfe = search_view(study, nfe)
    n = len(view.trials)
    if n < 2:
        raise NotEnoughData(f"parameter importances need at least 2 completed trials at NFE={nfe}; found {n}")
    params, n_holding = importance_params(view)
    if len(params) < 2:
        raise NotEnoughData("parameter importances need at least 2 parameters that vary across the completed "
                            f"trials; found {', '.join(params) if params else 'none'}")
    from optuna.visualization import matplotlib as ovm

    plt = _pyplot()
    before = set(plt.get_fignums())
    with _quiet_optuna(), plt.rc_context():
        try:
            ax = ovm.plot_param_importances(view, params=params, target_name="FID")
        except Exception as exc:  # e.g. too few trials for the evaluator's quantiles
            for num in set(plt.get_fignums()) - before:
                plt.close(num)
            raise NotEnoughData(f"Optuna could not compute parameter importances: {' '.join(str(exc).split())}") from None
        fig = ax.figure
        if not ax.patches:
            plt.close(fig)
            raise NotEnoughData("Optuna returned no parameter importances")
        fig.set_size_inches(9.5, 1.2 + 0.55 * len(params) + 2.5)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_title("", loc="left")
        ax.set_title(f"Parameter importances for FID: study '{study.study_name}', NFE={nfe}, "
                     f"{n_holding} trials", fontsize=12, fontweight="bold")
        ax.set_xlabel("importance for FID (normalised, sums to 1)")
        fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ ablations
def plot_ablation(trials: pd.DataFrame, name: str, title: str | None = None) -> Figure:
    """One designed grid (trials with role ``ablation:<name>``): every seed's FID and mean ± s.d. per config,
    the K = 1 replicate band, and the configurations that differ from K = 1 beyond noise marked (see
    :func:`analysis.summary.ablation_table` for the reference and the comparison count)."""
    table = ablation_table(trials, name)
    if table.empty:
        raise NotEnoughData(f"no completed trials of ablation '{name}'")
    labels = [(f"NFE={r.nfe} · " if name == "nfe" and r.nfe is not None else "") + r.config
              for r in table.itertuples()]
    rng = np.random.default_rng(0)
    with style():
        fig = Figure(figsize=(10, 1.3 + 0.55 * len(table) + 1.6), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(table))
        for yi, r in zip(y, table.itertuples()):
            color = BASELINE_COLOR if r.K == 1 else BDENSE_COLOR
            f = np.asarray(r.fids, dtype=float)
            ax.scatter(f, yi + rng.uniform(-0.12, 0.12, f.size), color=color, alpha=0.45, s=26, zorder=2)
            sd = r.std if math.isfinite(r.std) else 0.0
            ax.errorbar([r.mean], [yi], xerr=[sd], fmt="D", color=color, ms=8, capsize=5, lw=2, zorder=3)
        ax.set_yticks(y, [f"{noise_mark(d) + ' ' if noise_mark(d) else ''}{lab}  ({n} seeds)"
                          for lab, n, d in zip(labels, table["n_seeds"], table["direction"])])
        ax.set_ylim(len(table) - 0.5, -0.5)
        nfe = main_nfe(trials)
        band = replicate_band(trials, nfe, C.SCREEN)
        if band and name != "nfe" and math.isfinite(band["sd"]):
            ax.axvspan(band["mean"] - band["sd"], band["mean"] + band["sd"], color=BASELINE_COLOR, alpha=0.12, lw=0,
                       zorder=0, label=f"K=1 replicates at NFE={nfe}: {band['mean']:.3g} ± {band['sd']:.2g} "
                                       f"({band['n_runs']} runs)")
        m = int(table["comparisons"].max()) if table["comparisons"].notna().any() else 0
        if m:
            ax.plot([], [], ls="none", label=f"{MARK_LOWER}/{MARK_HIGHER}: lower/higher than K=1 beyond noise "
                                             f"(Bonferroni, {m} comparisons per NFE)")
        ax.scatter([], [], color=BASELINE_COLOR, marker="D", label="K=1: mean ± s.d. (dots: seeds)")
        ax.scatter([], [], color=BDENSE_COLOR, marker="D", label="B-DENSE: mean ± s.d. (dots: seeds)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9, frameon=False)
        ax.set_xlabel(fid_label(trials))
        ax.set_title(title or f"Ablation '{name}': FID per configuration ({_study_tag(trials)})")
    return fig


# ------------------------------------------------------------------------------------- fidelity
def plot_fidelity(trials: pd.DataFrame, title: str | None = None) -> Figure:
    """Screen FID (pooled over the screen's seeds) against full-length FID (mean ± s.d. over seeds) of every
    confirmed configuration, with the Spearman rank correlation and the two winners in the title."""
    from .fidelity import fidelity_table

    ft = fidelity_table(trials)
    if ft is None:
        raise NotEnoughData("the study has no completed full-length (fidelity 'full') trials")
    rows = [r for r in ft["rows"] if r["screen"] is not None]
    if not rows:
        raise NotEnoughData("no confirmed configuration has screen trials to compare with")
    with style():
        fig = Figure(figsize=(9.5, 6.4), layout="constrained")
        ax = fig.subplots()
        for r in rows:
            s, f = r["screen"], r["full"]
            color = BASELINE_COLOR if r["key"] == [1] else BDENSE_COLOR
            ax.errorbar(s["mean"], f["mean"], xerr=s["std"] if math.isfinite(s["std"]) else 0.0,
                        yerr=f["std"] if math.isfinite(f["std"]) else 0.0, fmt="o", color=color, ms=8, capsize=4,
                        lw=1.4)
            rank = f"#{r['confirm_rank']} " if r["confirm_rank"] else ""
            ax.annotate(f"{rank}{r['config']} ({f['n_seeds']} seeds)", (s["mean"], f["mean"]), xytext=(7, 5),
                        textcoords="offset points", fontsize=8, color=color)
        sp = ft["spearman"]
        rho = (f"Spearman ρ = {sp['rho']:.2f} (n = {sp['n']}, p = {sp['p']:.2g}"
               f"{', exact' if sp.get('method') == 'exact' else ''})" if sp and sp["rho"] is not None
               else f"Spearman ρ not computed (n = {ft['n_pairs']} < 3)")
        same = {True: "same winner", False: "the winner changes", None: "winner n/a"}[ft["same_winner"]]
        ax.set_xlabel(fid_label(trials, ", screen, pooled over its seeds ± s.d."))
        ax.set_ylabel(fid_label(trials, ", full length, mean ± s.d."))
        ax.set_title(title or f"Screen vs full-length FID at NFE={ft['nfe']}: {rho}; {same}")
        ax.scatter([], [], color=BASELINE_COLOR, label="K=1 baseline")
        ax.scatter([], [], color=BDENSE_COLOR, label="B-DENSE configuration")
        ax.legend(loc="best", fontsize=9)
    return fig
