"""Read-only helpers for the designed grids (``ablation:<name>`` trials) of a study.

The grids themselves, and the enqueueing of their trials, live in ``study/designs.py``: analysis/ only reads.
Tables and figures of the grids are :func:`analysis.summary.ablation_table` and
:func:`analysis.figures.plot_ablation`; the ``b`` grid's verdict is :mod:`analysis.bgrid`.
"""

from __future__ import annotations

from study import contract as C


def runs_at_nfe(trial, nfe: int | None) -> bool:
    """Whether the Optuna ``trial`` ran at ``nfe`` (always, for ``nfe=None``): trials of the nfe grid carry
    their own ``nfe`` user attribute, every other trial runs at its study's NFE."""
    return nfe is None or C.nfe_of(trial.user_attrs, int(nfe)) == int(nfe)
