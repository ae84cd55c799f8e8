"""Write notebooks/ab_vs_fid.ipynb and notebooks/ablations.ipynb from the cells below (without outputs).

    python notebooks/make_notebooks.py          # rewrite both notebooks (their outputs are dropped)
    python notebooks/make_notebooks.py --check  # exit 1 if the committed notebooks' cells differ from these
    python notebooks/run_notebooks.py           # then execute them in place against the published study
    make notebooks                              # both steps

The notebooks are committed executed (outputs kept, inline PNGs at a modest dpi) so that they show their plots
where the repository is browsed; ``--check`` compares the cells' sources and tags only. The notebooks are thin:
all computation lives in analysis/. Their first cell holds the parameters (tagged ``parameters`` for papermill);
each can be overridden by an environment variable, which is how the tests run them headless with nbclient
against a synthetic study and how run_notebooks.py points them at a published one:

    BDENSE_STUDY, BDENSE_STORAGE, BDENSE_TRACKING_URI, BDENSE_FIG_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMS = '''\
# Parameters: edit here, or set the environment variables (the tests do).
import os

STUDY_NAME = os.environ.get("BDENSE_STUDY") or None  # None: the storage's only study
STORAGE = os.environ.get("BDENSE_STORAGE", "runs/optuna-journal.log")  # as study/run.py --storage takes it
TRACKING_URI = os.environ.get("BDENSE_TRACKING_URI", "sqlite:///runs/mlflow.db")
FIG_DIR = os.environ.get("BDENSE_FIG_DIR", "runs/figures")  # where the figures are saved (PNG + SVG)
'''

SETUP = '''\
# Setup: find the project root (so analysis/ imports and relative paths work from notebooks/ too).
%matplotlib inline
%config InlineBackend.print_figure_kwargs = {"bbox_inches": "tight", "dpi": 72}  # small inline PNGs
import sys
from pathlib import Path

ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "analysis" / "__init__.py").is_file()), None)
if ROOT is None:  # started outside the project: use the project of the installed analysis package
    import analysis
    pkg = Path(analysis.__file__).parent if analysis.__file__ else Path(list(analysis.__path__)[0])
    ROOT = pkg.resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # STORAGE, TRACKING_URI and FIG_DIR are relative to the project root

import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by optuna
import pandas as pd
from IPython.display import Markdown, display

from analysis import figures, fit, load, summary
'''

AB_CELLS = [
    new_markdown_cell(
        "# Branch weights (a, b) vs FID: the paper's Figure 4 and the a-b relation\n\n"
        "B-DENSE weighs branch k's loss by $w_k = b\\,e^{a k}$. This notebook loads one study, plots every "
        "trial's (a, b) coloured by FID with the best trials sorted by ascending FID, and fits the relation "
        "between a and b among the best ones: $\\ln b = c_0 + c_1 a$ (a ridge of constant endpoint weight "
        "$w_K$ has slope $c_1 = -K$). Set the study in the first cell and run all."),
    new_code_cell(PARAMS + 'QUANTILE = float(os.environ.get("BDENSE_QUANTILE", 0.25))  # top share of trials for the fit\n'
                  'TOP_N = 15  # trials listed in the ranking panel\n', metadata={"tags": ["parameters"]}),
    new_code_cell(SETUP),
    new_code_cell(
        "trials = load.load_trials(STORAGE, STUDY_NAME)\n"
        "print(f\"{len(trials)} trials:\", summary.state_counts(trials), \"| NFE of the search:\", fit.main_nfe(trials))\n"
        "trials.head()"),
    new_markdown_cell("## The a-b relation among the top trials"),
    new_code_cell(
        "try:\n"
        "    ab = fit.fit_ab_relation(trials, quantile=QUANTILE)\n"
        "    display(Markdown(f\"**{ab.equation}** (b = {ab.equation_exp.split('= ', 1)[1]}), R² = {ab.r2:.2f}, \"\n"
        "                     f\"n = {ab.n} of {ab.n_candidates} trials with K={ab.K}, FID ≤ {ab.fid_threshold:.4g}\"))\n"
        "except fit.ABFitError as exc:\n"
        "    ab = None\n"
        "    print(\"no a-b fit:\", exc)"),
    new_markdown_cell("## Figure 4: schedules coloured by FID, and the best ones sorted by FID"),
    new_code_cell(
        "try:\n"
        "    fig = figures.plot_ab_vs_fid(trials, ab, quantile=QUANTILE, top_n=TOP_N)\n"
        "    print(\"saved:\", *figures.save_figure(fig, FIG_DIR, \"ab_vs_fid\", close=False))\n"
        "    display(fig)\n"
        "except figures.NotEnoughData as exc:\n"
        "    print(\"figure skipped:\", exc)"),
    new_markdown_cell("## The trials behind the fit (predicted vs actual b)"),
    new_code_cell(
        "top = fit.top_quantile(fit.ab_candidates(trials), QUANTILE)\n"
        "if ab is not None:\n"
        "    top = top[top[\"K\"] == ab.K].assign(b_predicted=lambda d: ab.predict_b(d[\"a_eff\"].astype(float)))\n"
        "top[[c for c in [\"number\", \"value\", \"fid_std\", \"K\", \"a_eff\", \"b_eff\", \"b_predicted\", \"role\"] if c in top]]"),
    new_markdown_cell("## Explore\n\nChange the quantile or the number of listed trials; with `ipywidgets` "
                      "installed this cell shows sliders."),
    new_code_cell(
        "def explore(quantile=QUANTILE, top_n=TOP_N):\n"
        "    try:\n"
        "        f = fit.fit_ab_relation(trials, quantile=quantile)\n"
        "        print(f.label())\n"
        "    except fit.ABFitError as exc:\n"
        "        f = None\n"
        "        print(\"no a-b fit:\", exc)\n"
        "    try:\n"
        "        display(figures.plot_ab_vs_fid(trials, f, quantile=quantile, top_n=top_n))\n"
        "    except figures.NotEnoughData as exc:\n"
        "        print(\"figure skipped:\", exc)\n"
        "\n"
        "try:\n"
        "    from ipywidgets import interact\n"
        "    interact(explore, quantile=(0.05, 1.0, 0.05), top_n=(5, 40, 5))\n"
        "except ImportError:\n"
        "    print(\"pip install ipywidgets for sliders; meanwhile call explore(quantile=0.1, top_n=20)\")"),
]

ABL_CELLS = [
    new_markdown_cell(
        "# Ablations: K, the weight schedule, NFE and b\n\n"
        "The designed grids are enqueued into the study and run by its workers:\n\n"
        "```\npython study/run.py --study-name NAME --ablation k          # every K, one fixed schedule\n"
        "python study/run.py --study-name NAME --ablation schedule   # several (a, b) at a fixed K\n"
        "python study/run.py --study-name NAME --ablation nfe        # K=1 vs best B-DENSE at NFE 2..5\n"
        "python study/run.py --study-name NAME --ablation b          # b = 0.1, 1, 10 at the best K and a\n```\n\n"
        "(`study.designs.enqueue_ablation` defines the grids.) This notebook shows what they found, next to "
        "the search's own trials."),
    new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
    new_code_cell(SETUP),
    new_code_cell(
        "trials = load.load_trials(STORAGE, STUDY_NAME)\n"
        "done = summary.completed(trials)\n"
        "print(f\"{len(trials)} trials:\", summary.state_counts(trials))\n"
        "done[\"role\"].value_counts()"),
    new_markdown_cell("## FID vs K (every trial, per-K mean with a bootstrap 95% CI)"),
    new_code_cell(
        "def show(make, name):\n"
        "    try:\n"
        "        fig = make()\n"
        "        print(\"saved:\", *figures.save_figure(fig, FIG_DIR, name, close=False))\n"
        "        display(fig)\n"
        "    except figures.NotEnoughData as exc:\n"
        "        print(f\"{name} skipped:\", exc)\n"
        "\n"
        "show(lambda: figures.plot_fid_vs_k(trials), \"fid_vs_k\")"),
    new_markdown_cell("## B-DENSE vs the K=1 baseline per NFE (mean and spread over seeds)"),
    new_code_cell(
        "show(lambda: figures.plot_baseline_vs_bdense(trials), \"baseline_vs_bdense\")\n"
        "pd.DataFrame([{\"NFE\": r[\"nfe\"],\n"
        "               \"K=1 mean\": r[\"baseline\"][\"mean\"] if r[\"baseline\"] else None,\n"
        "               \"K=1 s.d.\": r[\"baseline\"][\"std\"] if r[\"baseline\"] else None,\n"
        "               \"K=1 seeds\": r[\"baseline\"][\"n_seeds\"] if r[\"baseline\"] else 0,\n"
        "               \"B-DENSE mean\": r[\"bdense\"][\"mean\"] if r[\"bdense\"] else None,\n"
        "               \"B-DENSE s.d.\": r[\"bdense\"][\"std\"] if r[\"bdense\"] else None,\n"
        "               \"B-DENSE seeds\": r[\"bdense\"][\"n_seeds\"] if r[\"bdense\"] else 0,\n"
        "               \"best configuration\": r[\"bdense\"][\"config\"] if r[\"bdense\"] else None,\n"
        "               \"ΔFID\": r[\"delta\"]} for r in summary.headline(trials)])"),
    new_markdown_cell("## The designed grids"),
    new_code_cell(
        "names = summary.ablation_names(trials)\n"
        "if not names:\n"
        "    print(\"no ablation trials in this study yet; see the commands at the top\")\n"
        "for name in names:\n"
        "    display(Markdown(f\"### `{name}`\"))\n"
        "    display(summary.ablation_table(trials, name).drop(columns=[\"fids\"]))\n"
        "    show(lambda: figures.plot_ablation(trials, name), f\"ablation_{name}\")"),
    new_markdown_cell("## Per-branch training loss of the best B-DENSE trial and the baselines (MLflow)"),
    new_code_cell(
        "if load.tracking_store_exists(TRACKING_URI):\n"
        "    picks = summary.pick_curve_trials(trials, n=3)\n"
        "    hist = load.load_metric_histories(TRACKING_URI, list(picks[\"mlflow_run_id\"]))\n"
        "    show(lambda: figures.plot_branch_losses(hist, trials), \"branch_losses\")\n"
        "else:\n"
        "    print(\"no MLflow tracking store at\", TRACKING_URI)"),
]


def build() -> dict[str, nbformat.NotebookNode]:
    meta = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}
    out = {}
    for name, cells in (("ab_vs_fid.ipynb", AB_CELLS), ("ablations.ipynb", ABL_CELLS)):
        nb = new_notebook(cells=cells, metadata=meta)
        for i, cell in enumerate(nb.cells):  # stable ids so rewriting gives the same file
            cell["id"] = f"{Path(name).stem.replace('_', '-')}-{i:02d}"
        nbformat.validate(nb)
        out[name] = nb
    return out


def cell_sources(nb) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """What ``--check`` compares: each cell's type, id, source and tags (not outputs or execution counts)."""
    return [(c.cell_type, c.get("id", ""), c.source, tuple(c.metadata.get("tags", []))) for c in nb.cells]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name, nb in build().items():
        path = HERE / name
        if check:
            if not path.exists() or cell_sources(nbformat.read(path, as_version=4)) != cell_sources(nb):
                stale.append(name)
        else:
            path.write_text(nbformat.writes(nb) + "\n")
            print("wrote", path)
    if stale:
        print("out of date (run make notebooks, or python notebooks/make_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
