"""Distillation frameworks with B-DENSE branches, one module each, found through the registry."""

from __future__ import annotations

from ..data import ImageSet
from ..teacher import Teacher
from .common import DistillResult, DivergenceError, StepCallback, make_student
from .registry import FRAMEWORKS, Framework, framework_of, get_framework, register

# each import registers its framework
from .progressive import PDConfig, distill_pd  # noqa: E402
from .sfd import (  # noqa: E402
    SFDConfig, TrajectoryBank, build_trajectory_bank, cached_trajectory_bank, distill_sfd, endpoint_error, needed_points,
)


def distill(
    teacher: Teacher,
    config,
    *,
    data: ImageSet | None = None,
    bank: TrajectoryBank | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> DistillResult:
    """Distil ``teacher`` into a K-branch few-step student; the config's type picks the framework."""
    return framework_of(config).train(teacher, config, data=data, bank=bank, callback=callback, progress=progress)


__all__ = [
    "FRAMEWORKS", "DistillResult", "DivergenceError", "Framework", "PDConfig", "SFDConfig", "StepCallback",
    "TrajectoryBank", "build_trajectory_bank", "cached_trajectory_bank", "distill", "distill_pd", "distill_sfd",
    "endpoint_error", "framework_of", "get_framework", "make_student", "needed_points", "register",
]
