"""Distillation frameworks with B-DENSE branches: SFD (trajectory) and progressive distillation."""

from __future__ import annotations

from ..data import ImageSet
from ..teacher import Teacher
from .common import DistillResult, DivergenceError, StepCallback, make_student
from .progressive import PDConfig, distill_pd
from .sfd import (
    SFDConfig, TrajectoryBank, build_trajectory_bank, cached_trajectory_bank, distill_sfd, endpoint_error, needed_points,
)

FRAMEWORKS = ("sfd", "pd")


def distill(
    teacher: Teacher,
    config: SFDConfig | PDConfig,
    *,
    data: ImageSet | None = None,
    bank: TrajectoryBank | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> DistillResult:
    """Distil ``teacher`` into a K-branch few-step student; the config's type picks the framework."""
    if isinstance(config, SFDConfig):
        return distill_sfd(teacher, config, bank=bank, callback=callback, progress=progress)
    if isinstance(config, PDConfig):
        if data is None:
            raise ValueError("progressive distillation trains on data images: pass data=load_images(...)")
        return distill_pd(teacher, config, data, callback=callback)
    raise TypeError(f"unknown distillation config {type(config).__name__}; use SFDConfig or PDConfig")


__all__ = [
    "FRAMEWORKS", "DistillResult", "DivergenceError", "PDConfig", "SFDConfig", "StepCallback", "TrajectoryBank",
    "build_trajectory_bank", "cached_trajectory_bank", "distill", "needed_points", "distill_pd", "distill_sfd", "endpoint_error", "make_student",
]
