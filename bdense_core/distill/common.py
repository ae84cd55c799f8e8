"""What every distillation framework shares: the branched student, results, loss records and guards."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..edm import EDMPrecond
from ..networks import widen_head
from ..fast import sampling_engine, use_fast
from ..teacher import Teacher, sample_images

# Called after every training iteration with that iteration's record; raising from it stops the run
# (the study raises optuna.TrialPruned there), returning normally goes on.
StepCallback = Callable[[dict[str, float]], None]


class DivergenceError(FloatingPointError):
    """A distillation loss became NaN or infinite."""


def make_student(teacher_denoiser: EDMPrecond, branches: int) -> EDMPrecond:
    """The teacher's network with its last layer widened to ``branches * C`` channels, in training mode."""
    student = copy.deepcopy(teacher_denoiser)
    student.net = widen_head(teacher_denoiser.net, branches)
    return student.train().requires_grad_(True)


FAST_LOG_EVERY = 20  # the fast path's default logging interval (updates) for every framework's students


def log_interval(log_every: int | None, fast: bool) -> int:
    """How many updates a student's records are read from the device at a time: ``log_every`` if set, else
    :data:`FAST_LOG_EVERY` on the fast path and 1 (every update) on the eager path."""
    return log_every or (FAST_LOG_EVERY if fast else 1)


PACE_EVERY_S = 60.0  # seconds between two pace lines of one training loop
pace_log = logging.getLogger("bdense_core.distill")


class Pace:
    """Where a training loop's wall time goes, logged at INFO on ``bdense_core.distill`` at most every ``every``
    seconds: iterations done, milliseconds an iteration over the window, and the share of it the host spent
    waiting for the device (reading a block of records: the device is behind) and delivering records to the
    callbacks (tracking, pruning). What is left is the host queueing work (drawing paths, launching steps). A
    study's worker logs show these lines; a slow worker's lines tell a busy device from a starved host.

    The loop calls :meth:`waiting` and :meth:`delivering` around those two phases and :meth:`done` after each
    block of records; the first window includes compiling."""

    def __init__(self, what: str, total: int, every: float | None = None, clock: Callable[[], float] = time.perf_counter):
        self.what, self.total, self.clock = what, total, clock
        self.every = PACE_EVERY_S if every is None else every
        self.mark = clock()
        self.first = 0
        self.wait = self.deliver = 0.0

    def waiting(self, seconds: float) -> None:
        self.wait += seconds

    def delivering(self, seconds: float) -> None:
        self.deliver += seconds

    def done(self, iterations: int) -> str | None:
        """``iterations`` done so far; logs (and returns) a line once ``every`` seconds have passed, or at the end."""
        now = self.clock()
        window = now - self.mark
        n = iterations - self.first
        if n <= 0 or (window < self.every and iterations < self.total):
            return None
        line = (f"{self.what}: iteration {iterations:,}/{self.total:,}, {1000 * window / n:.1f} ms an iteration over "
                f"the last {window:.0f} s (host waiting for the device {100 * self.wait / window:.0f} %, "
                f"delivering records {100 * self.deliver / window:.0f} %)")
        pace_log.info(line)
        self.mark, self.first, self.wait, self.deliver = now, iterations, 0.0, 0.0
        return line


def diverged(value: float, step: int) -> DivergenceError:
    """The error for a loss that became ``value`` (NaN or infinite) at ``step``."""
    return DivergenceError(f"distillation loss became {value} at step {step}; lower the learning rate or the weights")


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Raise :class:`DivergenceError` before a NaN or infinite loss can reach the weights."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise diverged(value, step)


@dataclass
class DistillResult:
    """A trained student and the record of its training."""

    student: EDMPrecond
    config: Any
    teacher: Teacher
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    images_seen: int = 0
    sampler: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    # the few-step sampler as a function of (denoiser, x_T): lets the fast path run it on a compiled copy of
    # the student's endpoint branch; None: ``sample`` always runs ``sampler`` (eager)
    solve_with: Callable[[Callable, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    @property
    def nfe(self) -> int:
        return self.config.nfe

    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int | None = None, fast: bool | None = None) -> torch.Tensor:
        """``n`` images in [-1, 1] from the student's few-step sampler (endpoint branch only).

        Image i depends on ``seed`` and i only (:func:`bdense_core.teacher.sample_images`). On CUDA the fast
        path (the endpoint branch on the process's compiled bf16 sampler, batches of ``fast.SAMPLE_BATCH``;
        ``batch_size`` is then ignored) runs unless ``fast`` is False or the config says ``fast=False``;
        ``batch_size`` (default 500) sets the eager path's batches.
        """
        self.student.eval()
        t = self.teacher
        if fast is None:
            fast = getattr(self.config, "fast", None)
        if self.solve_with is not None and use_fast(t.device, fast):
            engine = sampling_engine(self.student)
            return sample_images(lambda x: self.solve_with(engine, x), n, t.image_shape, t.config.sigma_max, seed,
                                 engine.batch, t.device, pad=True)
        return sample_images(self.sampler, n, t.image_shape, t.config.sigma_max, seed, batch_size or 500, t.device)


def adam(params, lr: float, kind: str = "adam", weight_decay: float = 0.0, fused: bool = False):
    """Adam or AdamW; ``fused`` (CUDA only) runs the whole update as one fused kernel per parameter group."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)
