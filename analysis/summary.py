"""Plain tables computed from the trials frame (no plotting): the headline per NFE, the ranking of
configurations with their noise marks, the K = 1 replicate band, the training settings every table states,
ablation tables, PD's FID per round, bootstrap confidence intervals.

Every "best" and every "improvement" here is the study contract's rule (``study/contract.py``, its module
docstring states it): configurations pooled by seed, the K = 1 configuration as the baseline, the best K > 1
configuration by mean FID over seeds, Welch's t (or a prediction interval when one side has one seed) with
a Bonferroni count. This module only turns the trials frame into the contract's records and the contract's
groups into table rows.

The headline uses the study's headline fidelity (``full`` once full-length confirmation trials completed,
else ``screen``); the ranking, Figure 4 and the a-b fit use the screen (the search).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from study import contract as C

from .fit import main_nfe


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    df = trials[trials["state"] == "COMPLETE"]
    return df[np.isfinite(df["value"].astype(float))]


def records(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as the contract's records (the column names are the contract's)."""
    return trials.to_dict("records")


def headline_fidelity(trials: pd.DataFrame) -> str:
    """``full`` once the study has completed full-length trials, else ``screen`` (the contract's rule)."""
    return C.headline_fidelity(records(trials))


def describe_config(row: Mapping[str, Any]) -> str:
    """``K=4, a=0.31, b=0.042`` (``K=1`` for the baseline; ``K=2, w=...`` for free weights)."""
    return C.describe_config(C.config_key(dict(row)))


def is_uniform(row: pd.Series) -> bool:
    """K > 1 with equal weights: a = 0 for exponential weights, all w_k equal for free ones."""
    if pd.isna(row.get("K")) or int(row["K"]) <= 1:
        return False
    if row.get("role") == C.ROLE_BASELINE_UNIFORM:
        return True
    return _uniform_key(C.config_key(dict(row)))


def _uniform_key(key: tuple) -> bool:
    if key[0] is None or key == (1,) or key[0] <= 1:
        return False
    if key[1] == "free":
        ws = key[2]
        return max(ws) - min(ws) <= 1e-9 * max(abs(max(ws)), 1.0)
    return key[2] is not None and abs(key[2]) < 1e-12


def _value_of(recs: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    return {int(r["number"]): float(r["value"]) for r in recs if C._num(r.get("value")) is not None}


def group_stats(g: C.Group | None, values: Mapping[int, float] | None = None) -> dict[str, Any] | None:
    """A contract group as a table row: ``mean``, ``std`` (over seeds), ``n_seeds``, ``n_runs``, ``n_trials``,
    ``fids`` (one per seed), ``runs``, ``min``/``max`` (over runs), ``config``, ``K``, ``a``, ``b`` and
    ``trial_number`` (its trial with the lowest value, when ``values`` maps trial numbers to values)."""
    if g is None:
        return None
    key = g.key
    k = key[0]
    a = b = None
    if len(key) == 4:
        a, b = key[2], key[3]
    elif k == 1:
        a, b = 0.0, 1.0
    out = {
        "config": g.label, "K": k, "a": a, "b": b, "weights_mode": "free" if len(key) == 3 else "exp",
        "mean": g.mean, "std": g.sd, "n_seeds": g.n, "n_runs": g.n_runs, "n_trials": len(g.trials),
        "fids": list(g.values), "runs": list(g.runs), "seeds": [s if isinstance(s, (int, str)) else str(s) for s in g.seeds],
        "min": min(g.runs) if g.runs else float("nan"), "max": max(g.runs) if g.runs else float("nan"),
        "trial_numbers": sorted(g.trials),
    }
    if values:
        mine = [(values[t], t) for t in g.trials if t in values]
        if mine:
            out["trial_value"], out["trial_number"] = min(mine)
    return out


def _nfes(recs: list[dict], default: int | None, fidelity: str | None) -> list[int]:
    out = set()
    for r in recs:
        if r.get("state") != "COMPLETE" or C._num(r.get("value")) is None:
            continue
        if fidelity is not None and C.fidelity_of(r) != fidelity:
            continue
        n = C.nfe_of(r, default)
        if n is not None:
            out.add(n)
    return sorted(out)


def headline(trials: pd.DataFrame, fidelity: str | None = None) -> list[dict[str, Any]]:
    """K = 1 baseline vs the best B-DENSE configuration per NFE (sorted by NFE), by the contract's rule.

    ``fidelity`` None: each NFE's headline fidelity (``full`` where that NFE has completed full-length
    trials, else ``screen``). Each row: ``nfe``, ``fidelity``, ``baseline`` and
    ``bdense`` (:func:`group_stats` rows or None), ``delta`` (baseline - best mean), ``delta_pct``,
    ``comparison`` (the contract's test as a dict), ``verdict`` (one sentence) and ``candidates`` (the number
    of K > 1 configurations the best was chosen from, which is the Bonferroni count).
    """
    recs = records(trials)
    default = main_nfe(trials)
    values = _value_of(recs)
    out = []
    for nfe in _nfes(recs, default, fidelity):
        fid = fidelity or C.headline_fidelity([r for r in recs if C.nfe_of(r, default) == nfe])
        h = C.headline(recs, nfe=nfe, fidelity=fid, default_nfe=default)
        row: dict[str, Any] = {"nfe": nfe, "fidelity": fid, "baseline": group_stats(h.baseline, values),
                               "bdense": group_stats(h.best, values), "delta": None, "delta_pct": None,
                               "comparison": None, "verdict": None, "candidates": h.candidates}
        if h.improvement is not None:
            imp = h.improvement
            row["delta"] = imp.delta
            row["delta_pct"] = 100.0 * imp.relative if math.isfinite(imp.relative) else None
            row["comparison"] = imp.as_dict()
            row["verdict"] = imp.verdict()
        out.append(row)
    return out


def configurations(trials: pd.DataFrame, nfe: int | None | str = "auto", fidelity: str | None = C.SCREEN,
                   alpha: float = 0.05) -> pd.DataFrame:
    """Every K > 1 configuration at one NFE and fidelity, ranked as the contract ranks them (mean FID over
    seeds, then more seeds, then the earlier trial), each compared with K = 1 by the contract's test.

    Columns: ``rank``, ``config``, ``K``, ``a``, ``b``, ``mean``, ``std``, ``n_seeds``, ``n_runs``,
    ``n_trials``, ``trial_number`` (the best trial of the configuration), ``fids``, ``delta`` (K = 1 mean
    minus this mean), ``p``, ``method``, ``direction`` (``"lower"``/``"higher"`` beyond noise, else ``""``),
    ``comparisons`` (the Bonferroni count: every K > 1 configuration here).
    """
    recs = records(trials)
    default = main_nfe(trials)
    nfe = default if nfe == "auto" else nfe
    gs = C.groups(recs, nfe=nfe, fidelity=fidelity, default_nfe=default)
    cmp = C.versus_baseline(gs, alpha=alpha)
    values = _value_of(recs)
    rows = []
    for g in gs.values():
        if g.key == (1,) or g.n == 0:
            continue
        st = group_stats(g, values)
        c = cmp.get(g.key)
        st.update({"delta": c.delta if c else float("nan"), "p": c.p if c else float("nan"),
                   "method": c.method if c else "none", "direction": c.direction if c else "",
                   "comparisons": c.comparisons if c else 0,
                   "_order": (g.mean, -g.n, min(g.trials) if g.trials else 0)})
        rows.append(st)
    cols = ["rank", "config", "K", "a", "b", "weights_mode", "mean", "std", "n_seeds", "n_runs", "n_trials",
            "trial_number", "fids", "delta", "p", "method", "direction", "comparisons"]
    if not rows:
        return pd.DataFrame(columns=cols)
    rows.sort(key=lambda r: r.pop("_order"))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return pd.DataFrame(rows)[cols]


def replicate_band(trials: pd.DataFrame, nfe: int | None | str = "auto", fidelity: str | None = C.SCREEN
                   ) -> dict[str, Any] | None:
    """The spread of the K = 1 configuration's runs at one NFE and fidelity (None without K = 1 runs).

    ``mean``/``sd`` over every run, repeats of a seed included (the band a figure draws: what one more K = 1
    run would scatter over); ``n_runs``, ``n_seeds``, ``min``/``max``; ``within_seed_sd`` (pooled over seeds
    with repeated runs: run-to-run noise at a fixed seed; ``repeated_seeds`` gives each such seed's runs and
    range) and ``seed_mean``/``seed_sd`` (over the seeds' means: the spread the contract's test uses).
    """
    recs = records(trials)
    default = main_nfe(trials)
    nfe = default if nfe == "auto" else nfe
    g = C.groups(recs, nfe=nfe, fidelity=fidelity, default_nfe=default).get((1,))
    if g is None or not g.runs:
        return None
    repeated = [(s, r) for s, r in zip(g.seeds, g.seed_runs) if len(r) > 1]
    return {"nfe": nfe, "fidelity": fidelity, "mean": g.run_mean, "sd": g.run_sd, "n_runs": g.n_runs,
            "n_seeds": g.n, "min": min(g.runs), "max": max(g.runs), "within_seed_sd": g.within_seed_sd,
            "repeated_seeds": {str(s): {"runs": len(r), "min": min(r), "max": max(r)} for s, r in repeated},
            "seed_mean": g.mean, "seed_sd": g.sd, "n_trials": len(g.trials)}


# ------------------------------------------------------------------------------------ training settings
SETTING_LABELS = {C.ITERATIONS: "iterations", C.SEEDS: "seeds", C.AFS: "AFS", C.TEACHER_SUBSTEPS: "S",
                  C.BATCH_SIZE: "batch", C.LR: "lr", C.TEACHER_PATHS: "teacher paths", C.DISTANCE: "PD distance"}
_SEP = {C.TEACHER_SUBSTEPS: " = ", C.TEACHER_PATHS: ": ", C.DISTANCE: ": "}
PD_SETTINGS = (C.ITERATIONS, C.SEEDS, C.DISTANCE, C.BATCH_SIZE, C.LR)


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA:
        return None
    return v


def _seed_order(s: Any) -> tuple:
    return (0, s, "") if isinstance(s, (int, np.integer)) else (1, 0, str(s))


def _fmt_value(field: str, v: Any) -> str:
    if isinstance(v, bool) or field == C.AFS:
        return "on" if v in (True, "true", "True", 1) else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def settings(trials: pd.DataFrame, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The training settings of ``trials`` (completed rows): for each field the distinct values and how many
    trials had each, read from the trials' user attributes, else the study's attribute of that name.

    ``fields`` None: the contract's :data:`~study.contract.SETTINGS` (PD's own list when every trial is PD).
    Seeds are summarised as the distinct seeds and the seeds per trial. Returns ``{field: [(value, count)]}``
    (``[]``: recorded nowhere) plus ``"text"``: one line for a table's caption.
    """
    done = completed(trials) if "state" in trials else trials
    sattrs = trials.attrs.get("study", {}) if hasattr(trials, "attrs") else {}
    if fields is None:
        fw = set(done["framework"].dropna().astype(str)) if "framework" in done else set()
        fields = PD_SETTINGS if fw == {"pd"} else C.SETTINGS
    out: dict[str, Any] = {}
    parts = []
    n = len(done)
    for f in fields:
        if f == C.SEEDS:
            seeds, per = set(), Counter()
            for v in done.get(C.SEEDS, pd.Series(dtype=object)):
                lst = v if isinstance(v, (list, tuple)) else ([] if v is None or (isinstance(v, float) and math.isnan(v)) else [v])
                seeds.update(_hashable(s) for s in lst)
                per[len(lst)] += 1
            out[f] = sorted(seeds, key=_seed_order)
            if seeds:
                shown = ", ".join(str(s) for s in out[f][:8])
                more = f" and {len(seeds) - 8} more" if len(seeds) > 8 else ""
                per_txt = " or ".join(str(k) for k in sorted(per))
                parts.append(f"seeds {shown}{more} ({per_txt} per trial)")
            else:
                parts.append("seeds not recorded in the trials")
            continue
        col = done[f] if f in done else pd.Series([None] * n, index=done.index, dtype=object)
        vals = [_hashable(v) for v in col]
        if all(v is None for v in vals) and sattrs.get(f) is not None:
            vals = [_hashable(sattrs[f])] * n
        counts = Counter(v for v in vals if v is not None)
        out[f] = sorted(counts.items(), key=lambda kv: -kv[1])
        label = SETTING_LABELS.get(f, f)
        if not counts:
            parts.append(f"{label} not recorded in the trials")
        elif len(counts) == 1:
            v = next(iter(counts))
            parts.append(f"{_fmt_value(f, v)} {label}" if f == C.ITERATIONS else f"{label}{_SEP.get(f, ' ')}{_fmt_value(f, v)}")
        else:
            parts.append(f"{label} DIFFERS: " + ", ".join(f"{_fmt_value(f, v)} ({c} trial{'s' if c != 1 else ''})"
                                                          for v, c in out[f]))
    missing = sum(1 for v in (done[C.ITERATIONS] if C.ITERATIONS in done else []) if _hashable(v) is None)
    out["text"] = "; ".join(parts) + (f" ({missing} trials without a recorded length)" if 0 < missing < n else "")
    return out


def settings_for(trials: pd.DataFrame, nfe: int | None = None, fidelity: str | None = None,
                 role: str | None = None, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """:func:`settings` (of ``fields``) of the completed trials at ``nfe``/``fidelity``/``role`` (None: any)."""
    done = completed(trials)
    default = main_nfe(trials) if nfe is not None else None  # the study's NFE only where one is asked for
    keep = [(nfe is None or C.nfe_of(r, default) == nfe) and (fidelity is None or C.fidelity_of(r) == fidelity)
            and (role is None or r.get("role") == role) for r in records(done)]
    sub = done[pd.Series(keep, index=done.index, dtype=bool)]
    sub.attrs = trials.attrs
    return settings(sub, fields)


def machine_of(device: Any) -> str:
    """The machine a trial's ``device`` attribute names ("cuda:1 (NVIDIA H200)" -> "NVIDIA H200"; "cpu" stays)."""
    if device is None or (isinstance(device, float) and math.isnan(device)):
        return "not recorded"
    text = str(device)
    return text[text.index("(") + 1:-1] if text.endswith(")") and "(" in text else text


def drawn_trials(trials: pd.DataFrame, figure: str) -> pd.DataFrame:
    """The completed trials the report's figure ``figure`` draws from (the subject of its foot): Figure 4 and FID
    vs K the screen at the study's NFE; the headline figure each NFE's headline fidelity; an ablation its own
    trials (and, except the ``nfe`` grid, the screen's K = 1 replicates whose band it shades); any other figure
    (Optuna's, the fidelity figure, the loss curves) every completed trial."""
    done = completed(trials)
    recs = records(done)
    nfe = main_nfe(trials)
    screen_here = [C.fidelity_of(r) == C.SCREEN and C.nfe_of(r, nfe) == nfe for r in recs]
    if figure in ("ab_vs_fid", "fid_vs_k"):
        keep = screen_here
    elif figure == "baseline_vs_bdense":
        shown = {(row["nfe"], row["fidelity"]) for row in headline(trials)}
        keep = [(C.nfe_of(r, nfe), C.fidelity_of(r)) in shown for r in recs]
    elif figure.startswith("ablation_"):
        name = figure[len("ablation_"):]
        keep = [r.get("role") == f"{C.ABLATION_PREFIX}{name}"
                or (name != "nfe" and here and C.config_key(r) == (1,)) for r, here in zip(recs, screen_here)]
    else:
        keep = [True] * len(recs)
    sub = done[pd.Series(keep, index=done.index, dtype=bool)]
    sub.attrs = trials.attrs
    return sub


def provenance(trials: pd.DataFrame) -> str:
    """One line on ``trials`` (e.g. :func:`drawn_trials`, for the foot of a figure): the completed ones by fidelity
    with their training length and seeds, the FID sample count, and the machines they trained on (the ``device``
    attribute; older trials have none)."""
    done = completed(trials)
    by_fidelity = Counter(C.fidelity_of(r) for r in records(done))
    parts = [f"{fid} ({by_fidelity[fid]}): "
             f"{settings_for(trials, fidelity=fid, fields=[C.ITERATIONS, C.SEEDS])['text']}"
             for fid in C.FIDELITIES if by_fidelity[fid]]
    samples = trials.attrs.get("study", {}).get("fid_samples")
    if samples:
        parts.append(f"FID on {int(samples):,} samples")
    machines = Counter(machine_of(d) for d in (done["device"] if "device" in done else [None] * len(done)))
    parts.append("machines: " + ", ".join(f"{m} ({n})" for m, n in sorted(
        machines.items(), key=lambda kv: (kv[0] == "not recorded", -kv[1], kv[0]))))
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------- ablations
def ablation_names(trials: pd.DataFrame) -> list[str]:
    roles = trials["role"].dropna().astype(str)
    return sorted({r.split(":", 1)[1] for r in roles if r.startswith(C.ABLATION_PREFIX)})


def ablation_table(trials: pd.DataFrame, name: str, alpha: float = 0.05) -> pd.DataFrame:
    """One row per configuration of ablation ``name`` (completed trials) at each NFE, seeds pooled by the
    contract, and each K > 1 configuration against K = 1 at that NFE by the contract's test.

    The K = 1 reference is the grid's own K = 1 configuration when it has one (the ``k`` and ``nfe`` grids),
    else the study's K = 1 trials at that NFE and fidelity; ``comparisons`` counts the grid's K > 1
    configurations at that NFE. Columns: ``config``, ``K``, ``a``, ``b``, ``nfe``, ``fidelity``, ``mean``,
    ``std``, ``n_seeds``, ``n_runs``, ``n_trials``, ``fids``, ``delta``, ``p``, ``method``, ``direction``,
    ``comparisons``, ``reference`` (``"grid"`` or ``"study"``). Sorted by NFE, then K, then a, then b.
    """
    cols = ["config", "K", "a", "b", "nfe", "fidelity", "mean", "std", "n_seeds", "n_runs", "n_trials", "fids",
            "delta", "p", "method", "direction", "comparisons", "reference"]
    recs = records(trials)
    default = main_nfe(trials)
    mine = [r for r in recs if r.get("role") == f"{C.ABLATION_PREFIX}{name}" and r.get("state") == "COMPLETE"]
    rows = []
    for fid in C.FIDELITIES:
        for nfe in _nfes(mine, default, fid):
            gs = C.groups(mine, nfe=nfe, fidelity=fid, default_nfe=default)
            base, ref = gs.get((1,)), "grid"
            if base is None:
                base, ref = C.groups(recs, nfe=nfe, fidelity=fid, default_nfe=default).get((1,)), "study"
            others = [g for g in gs.values() if g.key != (1,)]
            for g in gs.values():
                st = group_stats(g)
                c = C.compare(base, g, comparisons=len(others), alpha=alpha) if base is not None and g.key != (1,) else None
                rows.append({**{k: st[k] for k in ("config", "K", "a", "b", "mean", "std", "n_seeds", "n_runs",
                                                    "n_trials", "fids")},
                             "nfe": nfe, "fidelity": fid,
                             "delta": c.delta if c else float("nan"), "p": c.p if c else float("nan"),
                             "method": c.method if c else "", "direction": c.direction if c else "", "comparisons": c.comparisons if c else 0,
                             "reference": ref if c else ""})
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["nfe", "K", "a", "b"], na_position="last", kind="stable").reset_index(drop=True)


def uniform_baseline(trials: pd.DataFrame, fidelity: str | None = None) -> list[dict[str, Any]]:
    """Uniform weights (K > 1, a = 0 or equal free weights) per NFE and K at the headline fidelity."""
    recs = records(trials)
    fid = fidelity or C.headline_fidelity(recs)
    default = main_nfe(trials)
    out = []
    for nfe in _nfes(recs, default, fid):
        for key, g in sorted(C.groups(recs, nfe=nfe, fidelity=fid, default_nfe=default).items(),
                             key=lambda kv: kv[0][0]):
            if _uniform_key(key):
                st = group_stats(g)
                st.update({"nfe": nfe})
                out.append(st)
    return out


def _round_record(rec: dict, i: int) -> dict | None:
    """Trial ``rec`` as if its FID were the one after round ``i + 1`` (None when it has no such round): each
    seed's value from ``fid_rounds_seeds`` where the trial recorded it, else the trial's mean as one value."""
    fr = rec.get(C.FID_ROUNDS)
    if not isinstance(fr, (list, tuple)) or len(fr) <= i or C._num(fr[i]) is None or not math.isfinite(float(fr[i])):
        return None
    out = dict(rec, value=float(fr[i]), **{C.FID: float(fr[i])})
    per, seeds = rec.get(C.FID_ROUNDS_SEEDS), rec.get(C.SEEDS)
    if isinstance(per, (list, tuple)) and isinstance(seeds, (list, tuple)) and len(per) == len(seeds) and all(
            isinstance(x, (list, tuple)) and len(x) > i and C._num(x[i]) is not None for x in per):
        out[C.FID_SEEDS] = [float(x[i]) for x in per]
    elif isinstance(seeds, (list, tuple)) and len(seeds) == 1:
        out[C.FID_SEEDS] = [float(fr[i])]
    else:  # several seeds, no per-seed record (trials before fid_rounds_seeds): the trial's mean counts once
        out[C.FID_SEEDS], out[C.SEEDS] = None, None
    return out


def round_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Progressive distillation's FID after every round (the ``fid_rounds`` user attribute) per configuration,
    NFE and fidelity: one row per (configuration, round), pooled by seed as the contract pools final FIDs
    (``study.contract.groups``: mean and s.d. over seeds, ``n`` seeds, ``trials``), with each K > 1
    configuration against K = 1 after the same round at the same NFE and fidelity (``contract.versus_baseline``:
    Bonferroni over the K > 1 configurations that reached that round) in ``verdict``. Empty when no trial
    recorded ``fid_rounds``."""
    cols = ["config", "nfe", "fidelity", "round", "mean", "std", "n", "trials", "verdict", "p", "direction"]
    if C.FID_ROUNDS not in trials:
        return pd.DataFrame(columns=cols)
    default = main_nfe(trials)
    recs = [r.to_dict() for _, r in completed(trials).iterrows()
            if isinstance(r.get(C.FID_ROUNDS), (list, tuple)) and len(r.get(C.FID_ROUNDS)) > 0]
    if not recs:
        return pd.DataFrame(columns=cols)
    order: list[tuple] = []  # (config key, nfe, fidelity) in the order the trials first show them
    for rec in recs:
        k = (C.config_key(rec), C.nfe_of(rec, default), C.fidelity_of(rec))
        if k not in order:
            order.append(k)
    settings = list(dict.fromkeys((n, f) for _, n, f in order))  # (nfe, fidelity): what a round is judged within
    cells: dict[tuple, dict] = {}
    for i in range(max(len(rec[C.FID_ROUNDS]) for rec in recs)):
        at = [x for x in (_round_record(rec, i) for rec in recs) if x is not None]
        for nfe, fid in settings:
            gs = C.groups(at, nfe=nfe, fidelity=fid, default_nfe=default)
            vs = C.versus_baseline(gs)
            for key, g in gs.items():
                cmp = vs.get(key)
                if key == (1,):
                    verdict = "the baseline"
                elif cmp is None:
                    verdict = "no K=1 trial at this round"
                else:
                    verdict = cmp.verdict()
                cells[(key, nfe, fid, i + 1)] = {
                    "config": g.label, "nfe": nfe, "fidelity": fid, "round": i + 1, "mean": g.mean,
                    "std": g.sd, "n": g.n, "trials": len(g.trials), "verdict": verdict,
                    "p": cmp.p if cmp is not None else float("nan"), "direction": cmp.direction if cmp else ""}
    # each (NFE, fidelity) block: K = 1 first, then the others as the trials first show them; each by round
    rows = [cells[k] for k in sorted(cells, key=lambda k: (settings.index(k[1:3]), k[0] != (1,), order.index(k[:3]), k[3]))]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------- misc
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
