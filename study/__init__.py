"""study: the Optuna study over B-DENSE's K and branch weights (a, b), every trial tracked in MLflow.

``python study/run.py --n-trials N`` (or the ``bdense-study`` console script). The modules, edge first:
``cli`` (flags -> :class:`~study.cli.StudyConfig`), ``storage`` (Optuna storage URLs, heartbeats, retries),
``space`` (the search space and the baselines), ``objective`` (one trial: distil, score, record),
``tracking`` (MLflow runs), ``workers`` (processes sharing one study), ``summary`` (progress and the final
table), ``run`` (puts them together).
"""
