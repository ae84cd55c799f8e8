"""bdense_core: the B-DENSE method, EDM teachers, samplers, data and FID. Knows nothing of Optuna or MLflow."""

from .data import DataConfig, ImageSet, load_images, to_uint8
from .distill import (
    FRAMEWORKS, DistillResult, DivergenceError, Framework, PDConfig, SFDConfig, TrajectoryBank, build_trajectory_bank,
    distill, get_framework,
)
from .evaluate import evaluate, make_evaluator
from .networks import UNetConfig, head_overhead
from .presets import PRESETS, Preset, get_preset
from .schedule import BranchWeights, fit_exponential
from .teacher import Teacher, TeacherConfig, load_teacher, save_teacher, train_teacher

__all__ = [
    "FRAMEWORKS", "Framework", "get_framework", "PRESETS", "BranchWeights", "DataConfig", "DistillResult", "DivergenceError", "ImageSet", "PDConfig", "Preset",
    "SFDConfig", "Teacher", "TeacherConfig", "TrajectoryBank", "UNetConfig", "build_trajectory_bank", "distill",
    "evaluate", "fit_exponential", "get_preset", "head_overhead", "load_images", "load_teacher", "make_evaluator",
    "save_teacher", "to_uint8", "train_teacher",
]
