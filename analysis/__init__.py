"""Analysis of finished B-DENSE studies: read the Optuna storage and the MLflow store, never write to the study.

Modules, each usable on its own:

- :mod:`analysis.load`      storage URL + study name -> pandas DataFrame (one row per trial); MLflow histories.
- :mod:`analysis.fit`       the relation between a and b among the best trials (``ln b = c0 + c1 a``).
- :mod:`analysis.summary`   plain tables: the headline per NFE, the ranking with noise marks, the K = 1 replicate
                            band, training settings, ablation tables, PD's FID per round, bootstrap CIs.
- :mod:`analysis.fidelity`  screen vs full length: the fidelity table, Spearman, both headlines.
- :mod:`analysis.bgrid`     the b question: does FID depend on b at a fixed a?
- :mod:`analysis.figures`   matplotlib/seaborn figures (Figure 4 reproduction, FID vs K, ...), PNG + SVG.
- :mod:`analysis.ablation`  read-only helpers for the designed grids (which ``study/designs.py`` enqueues).
- :mod:`analysis.report`    ``python -m analysis.report --study NAME --out DIR``.

Every "best" and every "improvement" is the study contract's rule (``study/contract.py``). Only
:mod:`analysis.load` and :mod:`analysis.figures` import Optuna; MLflow and matplotlib are imported where they
are used.
"""

from .load import StudyLoadError, load_metric_histories, load_study, load_trials

__all__ = ["StudyLoadError", "load_metric_histories", "load_study", "load_trials"]
