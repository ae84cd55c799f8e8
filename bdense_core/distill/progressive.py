"""Progressive distillation with B-DENSE (paper Algorithm 2; Salimans & Ho 2022), in EDM's sigma form.

DDIM is Euler on the PF-ODE in sigma, so one round reads: take a data image x, a student step i of N on the
polynomial grid, ``z = x + sigma_t eps``; the teacher makes two Euler steps ``t -> mid -> s`` on the grid of
2N steps (which contains the N-step grid); the student's target is the x-prediction that one Euler step from
``z`` would need to land on the teacher's result, ``x_tilde = (z_s - (s/t) z) / (1 - s/t)``. Loss: truncated
SNR weighting ``max(1/sigma^2, 1) * ||x_hat - x_tilde||^2``. With K = 2 branch 1 is supervised the same way
by the teacher's intermediate state at ``mid`` and branch 2 by the endpoint; the branch losses are summed
with weights ``w_k``. After each round the student becomes the teacher and the step count halves.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from ..data import ImageSet
from ..edm import karras_sigmas, sample_euler
from ..runtime import autocast, generator
from ..schedule import BranchWeights
from ..teacher import Teacher
from .common import DistillResult, StepCallback, adam, branch_record, check_finite, make_student
from .registry import Framework, register


@dataclass(frozen=True)
class PDConfig:
    teacher_steps: int = 16  # N0: Euler (DDIM) steps of the initial teacher
    rounds: int = 2  # halvings: students of N0/2, N0/4, ...
    branches: int = 2  # K: 1 (baseline) or 2 (intermediate + endpoint)
    weights: BranchWeights = field(default_factory=BranchWeights)
    iterations: int = 200  # updates per round
    batch_size: int = 64
    lr: float = 2e-4
    optimizer: str = "adamw"
    grad_clip: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    seed: int = 0
    amp: bool = False

    def __post_init__(self):
        if self.branches not in (1, 2):
            raise ValueError(f"progressive distillation supports K = 1 or 2 (two teacher steps per student step), got {self.branches}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.teacher_steps < 2 or self.teacher_steps % (2**self.rounds):
            raise ValueError(
                f"teacher_steps={self.teacher_steps} cannot be halved {self.rounds} times; use a multiple of {2**self.rounds}"
            )
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        self.weights.weights(self.branches)

    @property
    def nfe(self) -> int:
        """Steps (= network calls) of the final student."""
        return self.teacher_steps // 2**self.rounds

    def grid(self, steps: int) -> torch.Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, self.rho, append_zero=False)


def _x_target(z_next: torch.Tensor, z: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The x-prediction that makes one Euler step from (z, t) land on z_next at s."""
    ratio = s / t
    return (z_next - ratio * z) / (1 - ratio)


def pd_sample(student, x: torch.Tensor, config: PDConfig, steps: int) -> torch.Tensor:
    return sample_euler(student, x, config.grid(steps).to(x.device))


def distill_pd(
    teacher: Teacher,
    config: PDConfig,
    data: ImageSet,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> DistillResult:
    """Run ``config.rounds`` halving rounds; returns the last student (``config.nfe`` steps)."""
    device = teacher.device
    g = generator(config.seed, device)
    weights = config.weights.weights(config.branches).to(device)
    current_teacher = teacher.denoiser
    student = make_student(teacher.denoiser, config.branches)
    history, steps_seen = [], 0
    images = data.images.to(device)
    start = time.perf_counter()
    step = 0
    for rnd in range(config.rounds):
        n_student = config.teacher_steps // 2 ** (rnd + 1)
        fine = config.grid(2 * n_student).to(device)
        opt = adam(student.parameters(), config.lr, config.optimizer)
        for it in range(config.iterations):
            for group in opt.param_groups:  # linear annealing within the round
                group["lr"] = config.lr * (1 - it / config.iterations)
            idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=g, device=device)
            x0 = images[idx].float() / 127.5 - 1
            i = torch.randint(0, n_student, (config.batch_size,), generator=g, device=device)
            t, mid, s = (fine[2 * i + j].view(-1, 1, 1, 1) for j in range(3))
            z = x0 + t * torch.randn(x0.shape, generator=g, device=device)
            with torch.no_grad():
                z_mid = z + (mid - t) * (z - current_teacher(z, t.flatten())) / t
                z_s = z_mid + (s - mid) * (z_mid - current_teacher(z_mid, mid.flatten())) / mid
                targets = [_x_target(z_s, z, t, s)]
                if config.branches == 2:
                    targets.insert(0, _x_target(z_mid, z, t, mid))
                targets = torch.stack(targets, 1)  # [B, K, C, H, W]
            with autocast(device, config.amp):
                denoised = student.all_branches(z, t.flatten())
            snr_weight = torch.clamp(1 / t.flatten() ** 2, min=1.0).view(-1, 1)
            per_branch = (snr_weight * (denoised - targets).pow(2).flatten(2).mean(2)).mean(0)
            loss = (weights * per_branch).sum()
            check_finite(loss, step + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
            opt.step()
            step += 1
            steps_seen += config.batch_size
            rec = branch_record(step, loss, per_branch, endpoint_loss=float(per_branch[-1].detach()),
                                round=float(rnd + 1), student_steps=float(n_student))
            history.append(rec)
            if callback is not None:
                callback(rec)
        # the student becomes the teacher of the next round
        current_teacher = copy.deepcopy(student).eval().requires_grad_(False)
    wall = time.perf_counter() - start
    student.eval().requires_grad_(False)
    return DistillResult(
        student, config, teacher, history, wall, steps_seen,
        sampler=lambda x: pd_sample(student, x, config, config.nfe),
    )


@torch.no_grad()
def pd_endpoint_error(student, reference, config: PDConfig, student_steps: int, reference_steps: int,
                      shape, n: int = 64, seed: int = 12345) -> float:
    """Mean absolute pixel error between the student's and a reference denoiser's Euler samples from one x_T."""
    g = generator(seed, next(student.parameters()).device)
    x_T = torch.randn((n, *shape), generator=g, device=g.device) * config.sigma_max
    return float((pd_sample(student, x_T, config, student_steps) - pd_sample(reference, x_T, config, reference_steps)).abs().mean())


class PD(Framework):
    """Progressive distillation + B-DENSE: K = 1 or 2; the NFE is the teacher's steps halved ``rounds`` times."""

    name = "pd"
    config_type = PDConfig
    description = "progressive distillation with B-DENSE branches (paper Algorithm 2)"
    needs_data = True
    max_branches = 2
    prune_metric = "endpoint_loss"

    def train(self, teacher, config, *, data=None, bank=None, callback=None, progress=False) -> DistillResult:
        if data is None:
            raise ValueError("progressive distillation trains on data images: pass data=load_images(...)")
        return distill_pd(teacher, config, data, callback=callback, progress=progress)

    def for_study(self, config: PDConfig, k_choices: tuple[int, ...], nfe: int | None = None) -> PDConfig:
        from dataclasses import replace

        if max(k_choices) > 2:
            raise ValueError(f"progressive distillation supports K = 1 or 2 only, got K = {max(k_choices)}")
        rounds = config.rounds
        if nfe is not None and nfe != config.nfe:
            ratio = config.teacher_steps / max(nfe, 1)
            rounds = round(math.log2(ratio)) if ratio >= 2 else 0
            if nfe < 1 or rounds < 1 or 2**rounds * nfe != config.teacher_steps:
                raise ValueError(f"NFE {nfe}: progressive distillation halves the {config.teacher_steps} teacher "
                                 f"steps, so NFE must be {config.teacher_steps}/2^r for r >= 1")
        return replace(config, rounds=rounds, branches=max(k_choices))

    def for_trial(self, config: PDConfig, *, branches: int, weights: BranchWeights, seed: int,
                  nfe: int | None = None) -> PDConfig:
        from dataclasses import replace

        if nfe is not None and nfe != config.nfe:
            raise ValueError(f"a progressive-distillation trial runs at its study's NFE {config.nfe}, not {nfe}")
        return replace(config, branches=branches, weights=weights, seed=seed)

    def settings(self, config: PDConfig) -> dict:
        return dict(teacher_steps=config.teacher_steps, rounds=config.rounds)


register(PD())
