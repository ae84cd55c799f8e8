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


def _at_main_nfe(df, nfe):
    if nfe is None:
        return df
    return df[df["nfe"].fillna(nfe).astype(int) == int(nfe)]


def write_trials_csv(trials, path: Path) -> None:
    from .load import LIST_COLUMNS

    df = trials.copy()
    for col in df.columns:
        if col in LIST_COLUMNS or df[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
    df.to_csv(path, index=False)


def _figure_jobs(study, trials, histories_fn, fit, quantile: float, top_n: int) -> list[tuple[str, str, Any]]:
    from . import figures as F
    from .summary import ablation_names

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
    from .fit import ABFitError, fit_ab_relation, main_nfe
    from .summary import ablation_names, ablation_table, headline, pick_curve_trials, state_counts, uniform_baseline
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

    done = trials[trials["state"] == "COMPLETE"]
    seeds_per_trial = sorted({int(n) for n in done["n_seeds"]})
    summary = {
        "study": study_name,
        "storage": str(storage),
        "study_attrs": {k: v for k, v in sattrs.items()},
        "nfe": main_nfe(trials),
        "n_trials": int(len(trials)),
        "n_completed": int(len(done)),
        "states": state_counts(trials),
        "seeds_per_trial": seeds_per_trial,
        "n_seed_runs": int(done["n_seeds"].sum()),
        "roles": {str(k): int(v) for k, v in done["role"].value_counts().sort_index().items()},
        "headline": headline(trials),
        "uniform": uniform_baseline(trials),
        "fit": fit.to_dict() if fit else None,
        "fit_note": fit_note,
        "best_trials": [
            {"number": int(r["number"]), "value": float(r["value"]), "K": int(r["K"]) if pd.notna(r["K"]) else None,
             "a": float(r["a_eff"]), "b": float(r["b_eff"]), "n_seeds": int(r["n_seeds"]),
             "fid_std": float(r["fid_std"]), "role": r["role"], "nfe": int(r["nfe"]) if pd.notna(r["nfe"]) else None}
            for _, r in _at_main_nfe(done, main_nfe(trials)).sort_values(["value", "number"], kind="stable")
            .head(10).iterrows()
        ],
        "ablations": {name: ablation_table(trials, name).to_dict(orient="records") for name in ablation_names(trials)},
        "ablations_pending": {name: int(((trials["role"] == f"ablation:{name}")
                                         & trials["state"].isin(["WAITING", "RUNNING"])).sum())
                              for name in ablation_names(trials)},
        "generated": datetime.now().isoformat(timespec="seconds"),
        "figures": {f.name: ({"png": f.paths[0].name, "svg": f.paths[1].name} if f.made else {"skipped": f.note})
                    for f in figs},
    }
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
              f"- **completed trials by role**: " + ", ".join(f"{r} {n}" for r, n in s["roles"].items()), ""]

    lines += ["## Headline: K=1 baseline vs best B-DENSE", "",
              "FID, lower is better; mean ± sample s.d. over training seeds, pooled over every trial of the same "
              "configuration at that NFE (all K=1 trials are one configuration); a seed that several of those "
              "trials ran counts once, with its mean. The best B-DENSE configuration is the K>1 trial with the "
              "lowest FID, so a value taken from the search itself is optimistic; `--ablation nfe` re-runs it "
              "on designed trials.", "",
              "| NFE | K=1 baseline FID | seeds (trials) | best B-DENSE FID | seeds (trials) | best configuration "
              "| trial | ΔFID (baseline − B-DENSE) |",
              "|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in s["headline"]:
        b, d = r["baseline"], r["bdense"]
        delta = "n/a"
        if r["delta"] is not None:
            pct = f" ({r['delta_pct']:+.1f}%)" if r["delta_pct"] is not None else ""
            delta = f"{r['delta']:+.3g}{pct}"
        lines.append(
            f"| {r['nfe']} | {_mean_sd(b)} | {b['n_seeds']} ({b['n_trials']}) |" if b else f"| {r['nfe']} | n/a | 0 (0) |")
        lines[-1] += (f" {_mean_sd(d)} | {d['n_seeds']} ({d['n_trials']}) | {d['config']} | {d['trial_number']} |"
                      if d else " n/a | 0 (0) | n/a | n/a |")
        lines[-1] += f" {delta} |"
    if s["uniform"]:
        lines += ["", "Uniform weights (a = 0) for reference:", "",
                  "| NFE | K | FID | seeds (trials) |", "|---:|---:|---:|---:|"]
        for u in s["uniform"]:
            lines.append(f"| {u['nfe']} | {u['K']} | {_mean_sd(u)} | {u['n_seeds']} ({u['n_trials']}) |")

    lines += ["", "## The a-b relation among the best trials", ""]
    f = s["fit"]
    if f:
        kk = f"K={f['K']}" if f["K"] is not None else "K>1 (every K pooled: too few trials at one K)"
        lines += [f"Least squares over the top {f['quantile']:.0%} of trials by FID ({f['n']} of {f['n_candidates']} "
                  f"completed trials with {kk} at NFE={f['nfe']}, FID ≤ {_fmt(f['fid_threshold'])}):", "",
                  f"**{f['equation']}**  (equivalently {f['equation_exp']}),  R² = {_fmt(f['r2'], 3)}"
                  + (f", slope s.e. {_fmt(f['c1_se'], 2)}" if f.get("c1_se") is not None else ""), "",
                  "A ridge of constant endpoint weight w_K = b·e^(aK) would have slope −K"
                  + (f" = −{f['K']}" if f["K"] is not None else "") + "; slope 0 would mean only a matters."]
    else:
        lines.append(f"Not fitted: {s['fit_note']}")

    lines += ["", f"## Best trials at NFE={s.get('nfe')}", "", "| rank | trial | FID | ± s.d. | seeds | K | a | b | role |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, t in enumerate(s["best_trials"], 1):
        lines.append(f"| {i} | {t['number']} | {_fmt(t['value'])} | {_fmt(t['fid_std'], 3)} | {t['n_seeds']} | "
                     f"{t['K']} | {_fmt(t['a'], 3) if t['K'] != 1 else '—'} | {_fmt(t['b'], 3) if t['K'] != 1 else '—'} "
                     f"| {t['role']} |")

    if s["ablations"]:
        lines += ["", "## Ablations", ""]
        for name, rows in s["ablations"].items():
            pending = s.get("ablations_pending", {}).get(name, 0)
            lines += [f"### `{name}`", ""]
            if not rows:
                lines += [f"_No completed trials yet ({pending} waiting or running)._", ""]
                continue
            if pending:
                lines += [f"{pending} more trial(s) of this grid are waiting or running.", ""]
            lines += ["| configuration | NFE | FID | seeds (trials) |", "|---|---:|---:|---:|"]
            for r in rows:
                lines.append(f"| {r['config']} | {r['nfe']} | {_mean_sd(r)} | {r['n_seeds']} ({r['n_trials']}) |")
            lines.append("")

    lines += ["", "## Figures", ""]
    for fo in figs:
        if fo.made:
            png, svg = fo.paths[0].name, fo.paths[1].name
            lines += [f"### {fo.title}", "", f"![{fo.title}]({png})", "", f"[PNG]({png}) · [SVG]({svg})", ""]
        else:
            lines += [f"### {fo.title}", "", f"_Skipped: {fo.note}_", ""]
    lines += ["Data: [trials.csv](trials.csv) (one row per trial), [summary.json](summary.json).", ""]
    return "\n".join(lines)


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
