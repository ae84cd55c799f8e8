"""``python -m analysis.report --study NAME [--storage URL] [--tracking-uri URI] --out DIR``

Writes every figure (PNG + SVG), ``trials.csv`` (one row per trial), ``summary.md`` (the headline table:
K = 1 baseline vs best B-DENSE per NFE with mean and spread over seeds, counts of trials and seeds, the
fitted a-b relation, ablation tables, figure links) and ``summary.json`` (the same numbers, machine-readable)
into DIR, then logs DIR as artifacts (``report/``) to the study's MLflow parent run when the study names one
(``mlflow_parent_run_id``) and the tracking store is there.

Exit status: 0 written; 2 bad input (missing storage, unknown study, empty study, no completed trial, an
explicit --tracking-uri that does not exist, an unwritable --out), with one line on stderr and no figure.
A figure the data cannot support is skipped with its reason in summary.md (never an empty figure).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

PROG = "python -m analysis.report"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message otherwise)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .load import default_storage, default_tracking_uri

    p = _Parser(prog=PROG, description="Figures, a trials CSV and a Markdown summary of one B-DENSE study.")
    p.add_argument("--study", required=True, help="study name in the storage")
    p.add_argument("--storage", default=default_storage(),
                   help="Optuna storage as study/run.py takes it: journal:PATH or a journal file path, "
                        "sqlite:///PATH, postgresql://..., redis://... (default: %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI for the loss curves and for logging the report (default: the "
                        f"study's mlflow_uri attribute, else {default_tracking_uri()}; skipped with a note when "
                        f"that store is absent)")
    p.add_argument("--out", required=True, help="folder to write the report into (created)")
    p.add_argument("--quantile", type=float, default=0.25,
                   help="top quantile of trials by FID for the a-b fit (default: 0.25)")
    p.add_argument("--top-n", type=int, default=15, help="trials listed in the Figure-4 ranking (default: 15)")
    p.add_argument("--curves", type=int, default=3, help="trials whose loss curves are drawn (default: 3)")
    p.add_argument("--no-mlflow-log", action="store_true", help="do not log the report to the MLflow parent run")
    return p


@dataclass
class FigureOutput:
    name: str
    title: str
    paths: list[Path] = field(default_factory=list)
    note: str | None = None  # why it was skipped
    foot: str | None = None  # what it draws from (summary.provenance), written under it

    @property
    def made(self) -> bool:
        return bool(self.paths)


@dataclass
class Report:
    out: Path
    figures: list[FigureOutput]
    summary: dict[str, Any]
    notes: list[str]
    logged_to: str | None = None


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, paths -> str."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _mean_sd(s: dict | None) -> str:
    if not s:
        return "n/a"
    sd = f" ± {_fmt(s['std'], 3)}" if s.get("std") is not None and math.isfinite(s["std"]) else ""
    return f"{_fmt(s['mean'])}{sd}"


def write_trials_csv(trials, path: Path) -> None:
    from .load import LIST_COLUMNS

    df = trials.copy()
    for col in df.columns:
        if col in LIST_COLUMNS or df[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
    df.to_csv(path, index=False)


def _figure_jobs(study, trials, histories_fn, fit, quantile: float, top_n: int) -> list[tuple[str, str, Any]]:
    from . import figures as F
    from .summary import ablation_names, headline_fidelity

    jobs = [
        ("ab_vs_fid", "(a, b) schedules sorted by FID (paper Figure 4)",
         lambda: F.plot_ab_vs_fid(trials, fit or "auto", quantile=quantile, top_n=top_n)),
        ("fid_vs_k", "FID vs K", lambda: F.plot_fid_vs_k(trials)),
        ("baseline_vs_bdense", "B-DENSE vs K=1 baseline per NFE", lambda: F.plot_baseline_vs_bdense(trials)),
        ("branch_losses", "Per-branch loss curves", lambda: F.plot_branch_losses(histories_fn(), trials)),
        ("optuna_history", "Optuna optimisation history", lambda: F.plot_optimization_history(study)),
        ("optuna_importances", "Optuna parameter importances", lambda: F.plot_param_importances(study)),
    ]
    for name in ablation_names(trials):
        jobs.append((f"ablation_{name}", f"Ablation '{name}'", lambda name=name: F.plot_ablation(trials, name)))
    if headline_fidelity(trials) == "full":
        jobs.append(("fidelity", "Screen vs full-length FID of the confirmed configurations",
                     lambda: F.plot_fidelity(trials)))
    return jobs


def make_report(study_name: str, storage: str | None, out: str | Path, tracking_uri: str | None = None,
                quantile: float = 0.25, top_n: int = 15, curves: int = 3, log_to_mlflow: bool = True,
                explicit_tracking: bool = False) -> Report:
    """Write the report of ``study_name`` into ``out``. Raises StudyLoadError for bad input."""
    from .load import (StudyLoadError, default_tracking_uri, load_metric_histories, load_study, mlflow_client,
                       tracking_store_exists, trials_frame)

    study = load_study(storage, study_name)
    trials = trials_frame(study)  # raises for empty / no completed trials before anything is written

    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from . import figures as F
    from .fit import ABFitError, fit_ab_relation
    from .summary import drawn_trials, pick_curve_trials, provenance
    uri = tracking_uri or study.user_attrs.get("mlflow_uri") or default_tracking_uri()
    have_mlflow = tracking_store_exists(uri)
    if explicit_tracking and not have_mlflow:
        raise StudyLoadError(f"MLflow tracking store not found: {uri}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise StudyLoadError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    notes: list[str] = []
    sattrs = trials.attrs["study"]

    try:
        fit = fit_ab_relation(trials, quantile=quantile)
        fit_note = None
    except ABFitError as exc:
        fit, fit_note = None, str(exc)

    def histories():
        if not have_mlflow:
            raise F.NotEnoughData(f"no MLflow tracking store at {uri}")
        picks = pick_curve_trials(trials, n=curves)
        if picks.empty:
            raise F.NotEnoughData("no completed trial has an MLflow run id")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_metric_histories(uri, list(picks["mlflow_run_id"]), keys=("loss", "loss_branch_*"))

    figs: list[FigureOutput] = []
    for name, title, make in _figure_jobs(study, trials, histories, fit, quantile, top_n):
        fo = FigureOutput(name=name, title=title)
        try:
            fig = make()
            fo.foot = provenance(drawn_trials(trials, name))  # training length, seeds, samples, machines
            F.add_footer(fig, f"Trials drawn: {fo.foot}")
            fo.paths = F.save_figure(fig, out, name)
        except F.NotEnoughData as exc:
            fo.note = str(exc)
        except StudyLoadError as exc:
            fo.note = str(exc)
        except Exception as exc:  # a figure must not take the whole report down; say what happened
            fo.note = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            print(f"{PROG}: warning: figure {name} {fo.note}", file=sys.stderr)
        if not fo.made:  # a figure from an earlier report into the same folder would now be stale
            for fmt in F.FORMATS:
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
        figs.append(fo)

    write_trials_csv(trials, out / "trials.csv")

    summary = build_summary(study_name, storage, trials, fit, fit_note, top_n)
    summary["figures"] = {f.name: ({"png": f.paths[0].name, "svg": f.paths[1].name, "foot": f.foot} if f.made
                                   else {"skipped": f.note}) for f in figs}
    summary = _clean(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(render_markdown(summary, figs))

    report = Report(out=out, figures=figs, summary=summary, notes=notes)
    parent = sattrs.get("mlflow_parent_run_id")
    if log_to_mlflow and parent and have_mlflow:
        try:
            client = mlflow_client(uri)
            client.log_artifacts(str(parent), str(out), artifact_path="report")
            report.logged_to = f"{uri} run {parent} (artifacts: report/)"
        except Exception as exc:
            notes.append(f"could not log the report to MLflow run {parent}: {' '.join(str(exc).split())[:200]}")
    elif log_to_mlflow and parent and not have_mlflow:
        notes.append(f"not logged to MLflow: no tracking store at {uri}")
    return report


def _rounds_settings(trials) -> str:
    """The training settings of the trials that recorded a FID per round."""
    from study import contract as C

    from .summary import completed, settings

    done = completed(trials)
    sub = done[done[C.FID_ROUNDS].map(lambda v: isinstance(v, (list, tuple)) and len(v) > 0)]
    sub.attrs = trials.attrs
    return settings(sub)["text"]


def build_summary(study_name: str, storage: Any, trials, fit, fit_note: str | None, top_n: int) -> dict[str, Any]:
    """Every number of the report (``summary.json``), computed by analysis/'s tables and the contract's rule."""
    from study import contract as C

    from .bgrid import b_question
    from .fidelity import fidelity_table
    from .fit import main_nfe
    from .paired import paired_tables
    from .summary import (ablation_names, ablation_table, configurations, headline, headline_fidelity,
                          provenance, replicate_band, round_table, settings_for, state_counts,
                          uniform_baseline)

    done = trials[trials["state"] == "COMPLETE"]
    nfe = main_nfe(trials)
    hf = headline_fidelity(trials)
    heads = headline(trials)
    for row in heads:
        row["settings"] = settings_for(trials, nfe=row["nfe"], fidelity=row["fidelity"])["text"]
    ranked = configurations(trials, nfe=nfe, fidelity=C.SCREEN)
    noise = {fid: replicate_band(trials, nfe, fid) for fid in C.FIDELITIES}
    ablations, ablation_settings = {}, {}
    for name in ablation_names(trials):
        ablations[name] = ablation_table(trials, name).to_dict(orient="records")
        ablation_settings[name] = settings_for(trials, role=f"{C.ABLATION_PREFIX}{name}")["text"]
    rounds = round_table(trials)
    return {
        "study": study_name,
        "storage": str(storage),
        "study_attrs": dict(trials.attrs["study"]),
        "nfe": nfe,
        "n_trials": int(len(trials)),
        "n_completed": int(len(done)),
        "states": state_counts(trials),
        "seeds_per_trial": sorted({int(n) for n in done["n_seeds"]}),
        "n_seed_runs": int(done["n_seeds"].sum()),
        "roles": {str(k): int(v) for k, v in done["role"].value_counts().sort_index().items()},
        # where the completed trials trained (the "device" attribute; older trials have none)
        "devices": ({str(k): int(v) for k, v in done["device"].fillna("not recorded").value_counts().sort_index().items()}
                    if "device" in done.columns else {"not recorded": int(len(done))}),
        "provenance": provenance(trials),  # every completed trial's; each figure's own foot is in "figures"
        "headline_fidelity": hf,
        "headline": heads,
        "uniform": uniform_baseline(trials),
        "noise": {k: v for k, v in noise.items() if v is not None},
        "fit": fit.to_dict() if fit else None,
        "fit_note": fit_note,
        "ranking": ranked.head(top_n).to_dict(orient="records"),
        "ranking_total": int(len(ranked)),
        "ranking_comparisons": int(ranked["comparisons"].max()) if len(ranked) else 0,
        "ranking_beyond_noise": {d: int((ranked["direction"] == d).sum()) for d in ("lower", "higher")},
        "ranking_settings": settings_for(trials, nfe=nfe, fidelity=C.SCREEN)["text"],
        "fidelity": fidelity_table(trials),
        "b_question": b_question(trials),
        "paired": paired_tables(trials),
        "rounds": rounds.to_dict(orient="records"),
        "rounds_settings": _rounds_settings(trials) if len(rounds) else None,
        "ablations": ablations,
        "ablation_settings": ablation_settings,
        "ablations_pending": {name: int(((trials["role"] == f"{C.ABLATION_PREFIX}{name}")
                                         & trials["state"].isin(["WAITING", "RUNNING"])).sum())
                              for name in ablation_names(trials)},
        "generated": datetime.now().isoformat(timespec="seconds"),
    }


RULE = ("The study contract's rule (`study/contract.py`): a configuration is K and its weights (all K=1 trials "
        "are one configuration); its FIDs are pooled by training seed (each seed once, the mean of its runs); the "
        "best B-DENSE configuration is the K>1 configuration with the lowest mean over its seeds; the improvement "
        "is the K=1 mean minus the best mean, tested with Welch's t (both sides 2+ seeds) or the prediction "
        "interval of one new seed (one side a single seed), Bonferroni over the K>1 configurations the best was "
        "picked from, alpha = 0.05. A best picked from many single runs is optimistic; only a full-length "
        "confirmation on fresh seeds removes that.")


def _mark(direction: str | None, p: float | None) -> str:
    """A configuration against K = 1 in a table's last column; with no p (a single run each side: no spread to
    judge by) it says so rather than "within noise"."""
    from .load import _finite  # the summary holds None where a NaN was

    if not direction and not _finite(p):
        return "no spread to judge it by"
    return {"lower": "▼ lower", "higher": "▲ higher"}.get(direction or "", "within noise")


def _p(c: dict | None) -> str:
    from .load import _finite

    if not c or not _finite(c.get("p")):
        return "n/a"
    return f"{c['method']}, p = {c['p']:.2g}, {c['comparisons']} comp."


def _seeds(st: dict | None) -> str:
    if not st:
        return "0 (0)"
    return f"{st['n_seeds']} ({st['n_trials']})"


def _headline_lines(s: dict[str, Any]) -> list[str]:
    lines = ["## Headline: K=1 baseline vs best B-DENSE", "", RULE + " Each NFE uses its full-length trials where "
             "it has any, else its screen trials.", "",
             "| NFE | trials | K=1 baseline FID | seeds (trials) | best B-DENSE FID | seeds (trials) | best configuration "
             "| trial | ΔFID (baseline − B-DENSE) | test | verdict |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for r in s["headline"]:
        b, d = r["baseline"], r["bdense"]
        delta = "n/a"
        if r["delta"] is not None:
            pct = f" ({r['delta_pct']:+.1f}%)" if r["delta_pct"] is not None else ""
            delta = f"{r['delta']:+.3g}{pct}"
        lines.append(f"| {r['nfe']} | {r['fidelity']} | {_mean_sd(b) if b else 'n/a'} | {_seeds(b)} | {_mean_sd(d) if d else 'n/a'} | "
                     f"{_seeds(d)} | {d['config'] if d else 'n/a'} | {d.get('trial_number', 'n/a') if d else 'n/a'} | "
                     f"{delta} | {_p(r['comparison'])} | {r['verdict'] or 'n/a'} |")
    texts = {r.get("settings") for r in s["headline"]}
    if len(texts) == 1 and None not in texts:
        lines += ["", f"Training: {next(iter(texts))}."]
    else:
        lines += [""] + [f"Training at NFE={r['nfe']}: {r.get('settings')}." for r in s["headline"]]
    if s["uniform"]:
        lines += ["", "Uniform weights (a = 0) for reference:", "",
                  "| NFE | K | FID | seeds (trials) |", "|---:|---:|---:|---:|"]
        for u in s["uniform"]:
            lines.append(f"| {u['nfe']} | {u['K']} | {_mean_sd(u)} | {_seeds(u)} |")
    return lines


def _noise_lines(s: dict[str, Any]) -> list[str]:
    if not s.get("noise"):
        return []
    lines = ["", "## Noise: the K=1 replicates", "",
             "With K=1 the weights only scale the loss, so every K=1 trial is a replicate of one configuration. "
             "The band on Figure 4, FID vs K and the ablation figures is their mean ± s.d. over runs.", ""]
    for fid, n in s["noise"].items():
        rep = ", ".join(f"seed {k}: {v['runs']} runs, {_fmt(v['min'])} to {_fmt(v['max'])}"
                        for k, v in n["repeated_seeds"].items())
        lines.append(f"- **{fid}, NFE={n['nfe']}**: {n['n_runs']} K=1 runs over {n['n_seeds']} seed(s) "
                     f"({n['n_trials']} trials): FID {_fmt(n['min'])} to {_fmt(n['max'])}, mean {_fmt(n['mean'])} ± "
                     f"{_fmt(n['sd'], 2)} s.d. (the band).")
        if n["within_seed_sd"] is not None:
            lines.append(f"  Run-to-run at a fixed seed ({rep}): pooled s.d. {_fmt(n['within_seed_sd'], 2)}.")
        if n["seed_sd"] is not None:
            lines.append(f"  Between seeds (each seed's mean once, the spread the contract's test uses): "
                         f"{_fmt(n['seed_mean'])} ± {_fmt(n['seed_sd'], 2)} over {n['n_seeds']} seeds.")
        else:
            lines.append("  One seed only: the contract's test has no between-seed spread for K=1 here.")
    return lines


def _fidelity_lines(s: dict[str, Any]) -> list[str]:
    ft = s.get("fidelity")
    if not ft:
        return []
    lines = ["", f"## Screen vs full length (NFE={ft['nfe']})", "",
             "Each confirmed configuration: the FID of the screen trial it re-runs, its screen FID pooled over "
             "every screen trial of that configuration, and its full-length FID over the confirmation seeds.", "",
             "| configuration | confirm rank | screen trial(s) | screen trial FID | screen FID pooled | seeds (trials) "
             "| full-length FID | seeds (trials) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in ft["rows"]:
        sc, fu = r["screen"], r["full"]
        rank = {None: "n/a", 0: "baseline"}.get(r["confirm_rank"], r["confirm_rank"])
        lines.append(f"| {r['config']} | {rank} | {', '.join(str(t) for t in r['screen_trials']) or 'n/a'} | "
                     f"{_fmt(r['screen_trial_fid'])} | {_mean_sd(sc) if sc else 'n/a'} | {_seeds(sc)} | "
                     f"{_mean_sd(fu)} | {_seeds(fu)} |")
    sp = ft["spearman"]
    lines.append("")
    if sp and sp["rho"] is not None:
        lines.append(f"Spearman rank correlation between pooled screen FID and full-length mean FID: "
                     f"**ρ = {sp['rho']:.3f}** over n = {sp['n']} configurations ({_spearman_p(sp)}).")
    else:
        lines.append(f"Spearman rank correlation not computed: {ft['n_pairs']} configuration(s) with both FIDs "
                     f"(needs 3).")
    same = {True: "**the same**", False: "**not the same**", None: "n/a"}[ft["same_winner"]]
    lines.append(f"Screen winner (best K>1 by the contract): {ft['screen_winner'] or 'n/a'}"
                 f"{'' if ft['screen_winner_confirmed'] else ' (not confirmed)'}; full-length winner: "
                 f"{ft['full_winner'] or 'n/a'}: {same}. Lowest full-length FID "
                 f"{'of all (K=1 included)' if ft['headlines']['full']['baseline'] else '(K=1 has no full-length trial yet)'}: "
                 f"{ft['full_lowest']['config']} at {_fmt(ft['full_lowest']['mean'])} ({ft['full_lowest']['n']} seeds).")
    lines += ["", "| fidelity | K=1 baseline FID | seeds (trials) | best B-DENSE FID | seeds (trials) | best configuration "
              "| ΔFID | test | verdict |", "|---|---:|---:|---:|---:|---|---:|---|---|"]
    for fid in ("screen", "full"):
        h = ft["headlines"][fid]
        b, d, c = h["baseline"], h["best"], h["comparison"]
        lines.append(f"| {fid} | {_mean_sd(b) if b else 'n/a'} | {_seeds(b)} | {_mean_sd(d) if d else 'n/a'} | "
                     f"{_seeds(d)} | {d['config'] if d else 'n/a'} | {_fmt(c['delta'], 3) if c else 'n/a'} | {_p(c)} | "
                     f"{h['verdict'] or 'n/a'} |")
    lines += ["", f"Training, screen: {ft['settings']['screen']}.", f"Training, full length: {ft['settings']['full']}."]
    return lines


def _bgrid_lines(s: dict[str, Any]) -> list[str]:
    bq = s.get("b_question")
    if not bq:
        return []
    lines = ["", "## The b question: does FID depend on b at a fixed a?", "",
             "With Adam, b (the intercept of w_k = b·e^(ak)) only scales the loss. The `b` grid trains one K and "
             f"a with several b (NFE={bq['nfe']}, {bq['fidelity']} trials).", "",
             "| b | K | a | FID | seeds (trials) |", "|---:|---:|---:|---:|---:|"]
    for r in bq["rows"]:
        lines.append(f"| {_fmt(r['b'], 3)} | {r['K']} | {_fmt(r['a'], 3)} | {_mean_sd(r)} | {_seeds(r)} |")
    lines += ["", f"**Verdict**: {bq['verdict']}.", "", f"What it means for the paper's fitted a-b relation: "
              f"{bq['meaning']}"]
    if s.get("ablation_settings", {}).get("b"):
        lines += ["", f"Training: {s['ablation_settings']['b']}."]
    return lines


def _paired_lines(s: dict[str, Any]) -> list[str]:
    from .load import _finite  # the summary holds None where a NaN was

    tables = s.get("paired") or []
    if not tables:
        return []
    lines = ["", "## Paired by seed (a second reading, not the verdict)", "",
             "A seed fixes the teacher paths' noise and the students' draw order in every configuration, so a "
             "configuration and K=1 trained on the same seed are a matched pair (`analysis/paired.py`). Per shared "
             "seed: FID(K=1) − FID(configuration), positive when the configuration is better; paired t-test, "
             "Bonferroni over the configurations listed. The verdicts above stay the contract's (unpaired) test.", ""]
    for tab in tables:
        lines += [f"**NFE={tab['nfe']}, {tab['fidelity']} length**", "",
                  "| configuration | shared seeds | K=1 − config, per seed | mean ± s.d. | better on | paired p | "
                  "beyond noise |", "|---|---|---|---:|---:|---|---|"]
        for r in tab["rows"]:
            per = ", ".join(f"{d:+.2f}" for d in r["diffs"])
            lines.append(f"| {r['config']} | {', '.join(str(x) for x in r['seeds'])} | {per} | "
                         f"{r['mean']:+.3g} ± {_fmt(r['sd'], 2)} | {r['positive']} of {r['n']} | "
                         + (f"{r['p']:.2g} ({r['comparisons']} comp.)" if _finite(r["p"]) else "no spread")
                         + f" | {'yes' if r['beyond_noise'] else 'no'} |")
        lines.append("")
    return lines


def _ranking_lines(s: dict[str, Any]) -> list[str]:
    n = s["noise"].get("screen")
    m = s["ranking_comparisons"]
    band = (f"K=1 replicate band: {_fmt(n['mean'])} ± {_fmt(n['sd'], 2)} ({n['n_runs']} runs, {n['n_seeds']} seeds, "
            f"{_fmt(n['min'])} to {_fmt(n['max'])})" if n else "no K=1 trials, so no band and no marks")
    beyond = s["ranking_beyond_noise"]
    lines = ["", f"## Best configurations at NFE={s.get('nfe')} (screen)", "",
             f"The contract's ranking (mean FID over seeds) of all {s['ranking_total']} K>1 configurations of the "
             f"screen, the best {len(s['ranking'])} shown. {band}. The last column is each configuration against "
             f"K=1 by the contract's test, Bonferroni over m = {m} comparisons: {beyond['lower']} lower and "
             f"{beyond['higher']} higher than K=1 beyond noise.", "",
             "| rank | configuration | FID | ± s.d. | seeds (runs) | best trial | ΔFID vs K=1 | test | vs K=1 |",
             "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in s["ranking"]:
        c = {"method": r["method"], "p": r["p"], "comparisons": r["comparisons"]}
        lines.append(f"| {r['rank']} | {r['config']} | {_fmt(r['mean'])} | {_fmt(r['std'], 3)} | "
                     f"{r['n_seeds']} ({r['n_runs']}) | {r.get('trial_number', 'n/a')} | {_fmt(r['delta'], 3)} | "
                     f"{_p(c)} | {_mark(r['direction'], r['p'])} |")
    shown = [r["mean"] for r in s["ranking"] if r.get("mean") is not None]
    if n and len(shown) > 1 and n["repeated_seeds"]:
        seed, rep = max(n["repeated_seeds"].items(), key=lambda kv: kv[1]["runs"])
        lines += ["", f"The {len(shown)} configurations shown span {_fmt(min(shown))} to {_fmt(max(shown))} FID "
                      f"({_fmt(max(shown) - min(shown), 2)} apart); the {rep['runs']} K=1 runs of seed {seed}, all one "
                      f"configuration, span {_fmt(rep['min'])} to {_fmt(rep['max'])} "
                      f"({_fmt(rep['max'] - rep['min'], 2)} apart; pooled run-to-run s.d. {_fmt(n['within_seed_sd'], 2)})."]
    lines += ["", f"Training: {s['ranking_settings']}."]
    return lines


def _rounds_lines(s: dict[str, Any]) -> list[str]:
    if not s.get("rounds"):
        return []
    lines = ["", "## Progressive distillation: FID after every round", "",
             "Each configuration's FID after each round, pooled by seed as the headline pools final FIDs (mean ± "
             "s.d. over seeds); every K>1 configuration against K=1 after the same round at the same NFE and "
             "fidelity by the contract's test, Bonferroni over the K>1 configurations that reached that round.", "",
             "| configuration | NFE | fidelity | round | FID | seeds (trials) | against K=1 after this round |",
             "|---|---:|---|---:|---:|---:|---|"]
    for r in s["rounds"]:
        lines.append(f"| {r['config']} | {r['nfe']} | {r['fidelity']} | {r['round']} | {_mean_sd(r)} | "
                     f"{r['n']} ({r['trials']}) | {r['verdict']} |")
    if s.get("rounds_settings"):
        lines += ["", f"Training: {s['rounds_settings']}."]
    return lines


def render_markdown(s: dict[str, Any], figs: list[FigureOutput]) -> str:
    a = s["study_attrs"]
    lines = [f"# B-DENSE study report: {s['study']}", "",
             f"Written by `{PROG} --study {s['study']} --storage {s['storage']}` on {s.get('generated', 'n/a')}.", ""]
    facts = [
        ("storage", f"`{s['storage']}`"),
        ("preset", a.get("preset")), ("framework", a.get("framework")), ("NFE (search)", s.get("nfe")),
        ("FID samples", a.get("fid_samples")), ("teacher", a.get("teacher_key")),
        ("weights", a.get("weights_mode")), ("K choices", a.get("k_choices")),
        ("MLflow parent run", a.get("mlflow_parent_run_id")),
    ]
    for k, v in facts:
        if v is not None:
            lines.append(f"- **{k}**: {v}")
    states = ", ".join(f"{n} {st}" for st, n in s["states"].items())
    seeds = "/".join(str(x) for x in s["seeds_per_trial"]) or "n/a"
    lines += [f"- **trials**: {s['n_trials']} ({states}); **seeds per completed trial**: {seeds}; "
              f"**seed runs in total**: {s['n_seed_runs']}",
              "- **completed trials by role**: " + ", ".join(f"{r} {n}" for r, n in s["roles"].items()),
              "- **completed trials by device**: " + ", ".join(f"{d} {n}" for d, n in s["devices"].items()), ""]
    lines += _headline_lines(s)
    lines += _noise_lines(s)
    lines += _fidelity_lines(s)
    lines += _paired_lines(s)
    lines += _bgrid_lines(s)

    lines += ["", "## The a-b relation among the best trials", ""]
    f = s["fit"]
    if f:
        kk = f"K={f['K']}" if f["K"] is not None else "K>1 (every K pooled: too few trials at one K)"
        lines += [f"Least squares over the top {f['quantile']:.0%} of screen trials by FID ({f['n']} of "
                  f"{f['n_candidates']} completed trials with {kk} at NFE={f['nfe']}, FID ≤ {_fmt(f['fid_threshold'])}):",
                  "", f"**{f['equation']}**  (equivalently {f['equation_exp']}),  R² = {_fmt(f['r2'], 3)}"
                  + (f", slope s.e. {_fmt(f['c1_se'], 2)}" if f.get("c1_se") is not None else ""), "",
                  "A ridge of constant endpoint weight w_K = b·e^(aK) would have slope −K"
                  + (f" = −{f['K']}" if f["K"] is not None else "") + "; slope 0 would mean only a matters."]
    else:
        lines.append(f"Not fitted: {s['fit_note']}")

    lines += _ranking_lines(s)
    lines += _rounds_lines(s)

    if s["ablations"]:
        lines += ["", "## Ablations", "",
                  "Each configuration against K=1 at its NFE by the contract's test (the grid's own K=1 where it has "
                  "one, else the study's), Bonferroni over the grid's K>1 configurations at that NFE.", ""]
        for name, rows in s["ablations"].items():
            pending = s.get("ablations_pending", {}).get(name, 0)
            lines += [f"### `{name}`", ""]
            if not rows:
                lines += [f"_No completed trials yet ({pending} waiting or running)._", ""]
                continue
            if pending:
                lines += [f"{pending} more trial(s) of this grid are waiting or running.", ""]
            lines += ["| configuration | NFE | FID | seeds (trials) | ΔFID vs K=1 | test | vs K=1 |",
                      "|---|---:|---:|---:|---:|---|---|"]
            for r in rows:
                c = {"method": r["method"], "p": r["p"], "comparisons": r["comparisons"]}
                vs = _mark(r["direction"], r["p"]) if r["K"] != 1 and r.get("reference") else "—"
                lines.append(f"| {r['config']} | {r['nfe']} | {_mean_sd(r)} | {_seeds(r)} | "
                             f"{_fmt(r['delta'], 3) if r['K'] != 1 else '—'} | {_p(c) if r['K'] != 1 else '—'} | {vs} |")
            lines += ["", f"Training: {s.get('ablation_settings', {}).get(name, 'n/a')}.", ""]

    lines += ["", "## Figures", ""]
    if s.get("provenance"):
        lines += [f"Every figure's foot names the trials it draws from. All completed trials: {s['provenance']}.", ""]
    for fo in figs:
        if fo.made:
            png, svg = fo.paths[0].name, fo.paths[1].name
            lines += [f"### {fo.title}", "", f"![{fo.title}]({png})", ""]
            if fo.foot:
                lines += [f"Trials drawn: {fo.foot}.", ""]
            lines += [f"[PNG]({png}) · [SVG]({svg})", ""]
        else:
            lines += [f"### {fo.title}", "", f"_Skipped: {fo.note}_", ""]
    lines += ["Data: [trials.csv](trials.csv) (one row per trial), [summary.json](summary.json).", ""]
    return "\n".join(lines)


def _spearman_p(sp: dict) -> str:
    """Spearman's two-sided p as the report words it: exact (every pairing) or the t approximation."""
    if sp.get("p") is None:
        return "p n/a"
    how = "exact, over every pairing" if sp.get("method") == "exact" else sp.get("method", "t approximation")
    return f"two-sided p = {sp['p']:.2g}, {how}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.quantile <= 1:
        print(f"{PROG}: error: --quantile must be in (0, 1], got {args.quantile}", file=sys.stderr)
        return 2
    if args.top_n < 1 or args.curves < 0:
        print(f"{PROG}: error: --top-n must be >= 1 and --curves >= 0", file=sys.stderr)
        return 2
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from .load import StudyLoadError

    try:
        rep = make_report(args.study, args.storage, args.out, tracking_uri=args.tracking_uri,
                          quantile=args.quantile, top_n=args.top_n, curves=args.curves,
                          log_to_mlflow=not args.no_mlflow_log, explicit_tracking=args.tracking_uri is not None)
    except StudyLoadError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    made = [f for f in rep.figures if f.made]
    print(f"report of study '{args.study}' written to {rep.out}: {len(made)} figures, trials.csv, summary.md")
    for f in rep.figures:
        if not f.made:
            print(f"  skipped {f.name}: {f.note}")
    for n in rep.notes:
        print(f"  note: {n}")
    if rep.logged_to:
        print(f"  logged to MLflow: {rep.logged_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
