"""Analysis of finished B-DENSE studies: read the Optuna storage and the MLflow store, never write to the study.

Modules, each usable on its own:

- :mod:`analysis.load`      storage URL + study name -> pandas DataFrame (one row per trial); MLflow histories.
- :mod:`analysis.fit`       the relation between a and b among the best trials (``ln b = c0 + c1 a``).
- :mod:`analysis.summary`   plain tables: baseline vs best B-DENSE per NFE, ablation tables, bootstrap CIs.
- :mod:`analysis.figures`   matplotlib/seaborn figures (Figure 4 reproduction, FID vs K, ...), PNG + SVG.
- :mod:`analysis.ablation`  designed grids (``k``, ``schedule``, ``nfe``) enqueued into a study.
- :mod:`analysis.report`    ``python -m analysis.report --study NAME --out DIR``.

Only :mod:`analysis.load` and :mod:`analysis.ablation` import Optuna; MLflow and matplotlib are imported
where they are used, so ``from analysis.ablation import enqueue_ablation`` stays light.
"""

from .load import StudyLoadError, load_metric_histories, load_study, load_trials

__all__ = ["StudyLoadError", "load_metric_histories", "load_study", "load_trials"]
