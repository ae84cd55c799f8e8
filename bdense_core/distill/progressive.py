"""Progressive distillation with B-DENSE (paper Algorithm 2; Salimans & Ho 2022), in EDM's sigma form.

DDIM is Euler on the PF-ODE in sigma, so one round reads: take a data image x, a student step i of N on the
polynomial grid, ``z = x + sigma_t eps``; the teacher makes two Euler steps ``t -> mid -> s`` on the grid of
2N steps (which contains the N-step grid). With K = 2 branch 1 is supervised at ``mid`` (the teacher's state
after one step) and branch 2 at ``s`` (after two); with K = 1 the only branch at ``s``. The branch losses are
summed with weights ``w_k``. After each round the student becomes the teacher and the step count halves.

Two distances (``PDConfig.distance``):

- ``"x"`` (the default, Salimans & Ho's loss): branch k is compared in x-space with the x-prediction that one
  Euler step from ``z`` would need to land on the teacher's state at ``tau_k``,
  ``x_tilde = (z_tau - (tau/t) z) / (1 - tau/t)``, weighted by truncated SNR ``max(1/t^2, 1)``. For branch 1
  that target is the teacher's own denoised output, so branch 1 mostly learns to stay where the teacher is.
- ``"state"`` (the B-DENSE authors' own PD code): branch k makes one student Euler (DDIM) jump from ``z`` to
  ``tau_k`` with its own denoised output, ``z_hat_k = z + (tau_k - t)(z - D_k(z; t))/t``, and is compared with
  the teacher's *state* there: squared error (mean over pixels and batch) weighted by ``(1 + alpha/sigma)^gamma``
  at the start point t, ``gamma = PDConfig.gamma`` (1).

How the reference's weighting reads in EDM's form. The reference (GitHub Arnav-codes-W/BranchDistillation,
``new_model/BranchDistillation/branchdistillation.py``; read, not copied) works in the variance-preserving
DDPM form of diffusers (epsilon prediction, ``z = alpha x + sigma eps``, alpha^2 + sigma^2 = 1), takes one
student DDIM step per branch from z_t, and adds ``mean(w (z_hat_1 - z_teacher_1)^2)`` and
``mean(w (z_hat_2 - z_teacher_2)^2)`` with ``w = (1 + alpha_t/sigma_t)^gamma``, gamma = 1: equal branch
weights. EDM's variance-exploding state is ``z_ve = z_vp / alpha`` with ``sigma_ve = sigma_vp / alpha_vp``, so
``alpha_vp/sigma_vp = 1/sigma_ve``: alpha = 1 in the VE form and the weight is ``(1 + 1/t)^gamma`` with t
the EDM noise level the student starts from. The reference's squared error of VP states at a landing point
tau is ``alpha_tau^2 = 1/(1 + tau^2)`` times the squared error of VE states; that factor is not applied here:
the project keeps one parameterisation (EDM's) for every loss, and the factor (down to 1/6400 at sigma = 80)
is a side effect of the reference's parameterisation rather than a weighting it chooses, while the weighting
it does choose, ``(1 + alpha/sigma)^gamma``, is kept. Other departures from the reference, each deliberate:
its branch 1 steps to the student's *next* time yet is compared with the teacher's state after *one* step;
here branch k jumps to its own point tau_k (B-DENSE's definition, DESIGN.md), which makes branch 1's loss zero
at initialisation (the student starts as the teacher, and its jump to ``mid`` is the teacher's first step) and
branch 2's error at initialisation only the teacher's second step's change of slope. Its student scheduler is a
separate DDPM schedule over the student's step count, which gives z_t a different noise level than the
teacher's (alpha_bar 0.84 vs 0.72 at step 32 of 64 with diffusers' linear betas); here one grid serves both
(the N-step grid inside the 2N-step grid, as in Salimans & Ho). No x0 clipping and no EMA, as everywhere in
the project.

Precision: fp32 on both paths (``PDConfig.amp`` off in every preset; the fast path compiles the fp32 update). A
student that starts as its teacher has a PD loss at the level of fp32 rounding, and the x-distance's weight
``max(1/t^2, 1)`` (up to 1/0.002^2) multiplies any rounding of the network's output: with the shipped
fmnist-gpu teacher (first round, a batch of 128 training images, CPU, ``python benchmarks/pd_precision.py``) the
two branch losses at initialisation are 2e-10 and 1.8e-4 in fp32, and 4.9e-3 and 5.0e-3 with the student under
bf16 autocast (4.9e-3 and 3.1e-3 with the teacher under it): bf16's rounding alone is about 25 times the signal
the first updates learn from. On an H100 the same script gives 1.8e-4 in fp32, 21 and 13 times that with the
student or the teacher in bf16, and no change with TF32 (torch's default for convolutions), which stays on.

FID after every round: ``distill_pd(..., on_round=f)`` calls ``f(round_index, student_steps, result)`` after
each round (``round_index`` 1 for the first halving, as the ``round`` of the loss records), where ``result``
is a :class:`DistillResult` of that round's student (frozen: it is also the next round's teacher) whose
``sample()`` runs ``student_steps`` Euler steps, so a driver can score and log FID per round.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from ..data import ImageSet
from ..edm import karras_sigmas, sample_euler
from ..fast import (Endpoint, compile_mode, compiled, force_layout_opt, new_step, no_gc, use_fast,
                    without_cudagraphs)
from ..networks import select_branches
from ..runtime import autocast, generator
from ..schedule import BranchWeights
from ..teacher import Teacher
from .common import DistillResult, Pace, StepCallback, adam, check_finite, diverged, log_interval, make_student
from .registry import Framework, register


DISTANCES = ("x", "state")
# Called after each round with (round_index (1-based), student steps, that round's DistillResult); raising
# from it stops the run.
RoundCallback = Callable[[int, int, DistillResult], None]


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
    amp: bool = False  # bf16 autocast for the student (either path); off in every preset: see the module docstring
    distance: str = "x"  # "x": x-space targets, truncated SNR (Salimans & Ho); "state": DDIM states (the authors')
    gamma: float = 1.0  # the "state" distance's weight (1 + 1/sigma_t)^gamma
    fast: bool = True  # CUDA: compiled update (CUDA graphs, fused AdamW) and sampling; the CPU always runs eager
    log_every: int | None = None  # records are read from the device every this many updates (None: 20 fast, 1 eager)

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown PD distance {self.distance!r}; choose one of {', '.join(DISTANCES)}")
        if not math.isfinite(self.gamma):
            raise ValueError(f"gamma must be finite, got {self.gamma}")
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


def _euler(z: torch.Tensor, denoised: torch.Tensor, t: torch.Tensor, to: torch.Tensor) -> torch.Tensor:
    """One Euler (DDIM) step of the PF-ODE from (z, t) to ``to`` with the given denoised output."""
    return z + (to - t) * (z - denoised) / t


@torch.no_grad()
def teacher_states(teacher, z: torch.Tensor, t: torch.Tensor, mid: torch.Tensor, s: torch.Tensor):
    """The teacher's two Euler steps ``t -> mid -> s`` from z: its states (z_mid, z_s)."""
    z_mid = _euler(z, teacher(z, t.flatten()), t, mid)
    return z_mid, _euler(z_mid, teacher(z_mid, mid.flatten()), mid, s)


def draw_batch(images: torch.Tensor, fine: torch.Tensor, n_student: int, batch_size: int, g: torch.Generator):
    """One update's batch for a round whose student takes ``n_student`` steps on ``fine`` (the 2N-step grid):
    ``(z, t, mid, s)``, training images (uint8) noised to a student step's start t, with the teacher's midpoint
    and the student step's end (``[B, 1, 1, 1]`` each); everything random comes from ``g``, in a fixed order."""
    device = images.device
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=g, device=device)
    x0 = images[idx].float() / 127.5 - 1
    i = torch.randint(0, n_student, (batch_size,), generator=g, device=device)
    t, mid, s = (fine[2 * i + j].view(-1, 1, 1, 1) for j in range(3))
    return x0 + t * torch.randn(x0.shape, generator=g, device=device), t, mid, s


def branch_losses(student, teacher, z: torch.Tensor, t: torch.Tensor, mid: torch.Tensor, s: torch.Tensor,
                  config: PDConfig) -> torch.Tensor:
    """Per-branch loss ``[K]`` of one batch (``t``, ``mid``, ``s`` shaped ``[B, 1, 1, 1]``) under
    ``config.distance`` (see the module docstring); differentiable in the student's parameters."""
    z_mid, z_s = teacher_states(teacher, z, t, mid, s)
    points = [s] if config.branches == 1 else [mid, s]
    states = [z_s] if config.branches == 1 else [z_mid, z_s]
    with autocast(z.device, config.amp):
        denoised = student.all_branches(z, t.flatten())  # [B, K, C, H, W]
    denoised = denoised.float()
    if config.distance == "x":
        targets = torch.stack([_x_target(zk, z, t, tau) for zk, tau in zip(states, points)], 1)
        weight = torch.clamp(1 / t.flatten() ** 2, min=1.0).view(-1, 1)
        return (weight * (denoised - targets).pow(2).flatten(2).mean(2)).mean(0)
    jumps = torch.stack([_euler(z, denoised[:, k], t, tau) for k, tau in enumerate(points)], 1)
    weight = (1 + 1 / t.flatten()).pow(config.gamma).view(-1, 1)
    return (weight * (jumps - torch.stack(states, 1)).pow(2).flatten(2).mean(2)).mean(0)


def pd_sample(student, x: torch.Tensor, config: PDConfig, steps: int) -> torch.Tensor:
    return sample_euler(student, x, config.grid(steps).to(x.device))


class PDStep(nn.Module):
    """One PD update's forward: the teacher's two Euler steps, the student's K branches and their losses
    (:func:`branch_losses`); ``forward(z, t, mid, s)`` returns the per-branch loss ``[K]``. ``teacher`` is the
    engine's one-branch teacher slot, in fp32 on either path (channels_last on the fast path); the student follows
    ``config.amp`` on either path. bf16 is off for PD: see the module docstring."""

    def __init__(self, student, teacher, config: PDConfig, fast: bool):
        super().__init__()
        self.student, self.teacher, self.config = student, Endpoint(teacher, bf16=False) if fast else teacher, config

    def forward(self, z, t, mid, s):
        return branch_losses(self.student, self.teacher, z, t, mid, s, self.config)


class PDEngine:
    """The training state of one PD student: the student, a one-branch teacher slot that each round's teacher
    is copied into (the preset's teacher, then the endpoint branch of the student that finished the round), and
    the update's forward, compiled on the fast path. Fast-path engines are cached per process, so a worker
    compiles the update once for all its trials and rounds (CUDA graphs keep the weights' addresses: new weights
    are copied in, never swapped)."""

    def __init__(self, teacher: Teacher, config: PDConfig, fast: bool):
        d = teacher.denoiser
        self.student = make_student(d, config.branches)
        self.slot = copy.deepcopy(d).eval().requires_grad_(False)
        if fast:
            self.student = self.student.to(memory_format=torch.channels_last)
            self.slot = self.slot.to(memory_format=torch.channels_last)
        self.init = {k: v.clone() for k, v in self.student.state_dict().items()}
        step = PDStep(self.student, self.slot, config, fast=fast)
        self.step = compiled(step) if fast else step
        self.busy = False

    @torch.no_grad()
    def start(self, teacher: Teacher) -> nn.Module:
        """A new student (the teacher's network with a widened head) and the teacher in the slot."""
        self.student.load_state_dict(self.init)
        self.student.train().requires_grad_(True)
        self.load_teacher(teacher.denoiser)
        return self.student

    @torch.no_grad()
    def load_teacher(self, denoiser) -> None:
        """Copy ``denoiser``'s endpoint branch into the teacher slot (the next round's teacher)."""
        self.slot.load_state_dict(select_branches(denoiser.state_dict(), denoiser.channels, [denoiser.branches - 1],
                                                  prefix="net."))


_ENGINES: dict[tuple, PDEngine] = {}


def _engine(teacher: Teacher, config: PDConfig, fast: bool) -> PDEngine:
    if not fast:
        return PDEngine(teacher, config, fast=False)
    d = teacher.denoiser
    key = (teacher.key, d.net.config, config.branches, config.batch_size, config.distance, config.gamma, config.amp,
           str(teacher.device), compile_mode(), force_layout_opt())  # an engine serves only configs equal in these
    if key not in _ENGINES:
        _ENGINES[key] = PDEngine(teacher, config, fast=True)
    return _ENGINES[key]


def distill_pd(
    teacher: Teacher,
    config: PDConfig,
    data: ImageSet,
    callback: StepCallback | None = None,
    progress: bool = False,
    on_round: RoundCallback | None = None,
) -> DistillResult:
    """Run ``config.rounds`` halving rounds; returns the last student (``config.nfe`` steps).

    ``on_round(round_index, student_steps, result)`` (optional) is called once after each round, with
    ``round_index`` 1, 2, ..., the round's student step count and a :class:`DistillResult` of that round's
    frozen student (its ``sample()`` uses ``student_steps`` steps; its ``config.nfe`` is ``student_steps``).
    """
    return without_cudagraphs(lambda hooks: _distill_pd(teacher, config, data, hooks[0], progress, hooks[1]),
                              [callback, on_round])


def _distill_pd(teacher, config, data, callback, progress, on_round) -> DistillResult:
    device = teacher.device
    fast = use_fast(device, config.fast)
    g = generator(config.seed, device)
    weights = config.weights.weights(config.branches).to(device)
    engine = _engine(teacher, config, fast)
    if engine.busy:
        raise RuntimeError("this process is already training a PD student of this shape; train one at a time")
    engine.busy = True
    try:
        student = engine.start(teacher)
        log_every = log_interval(config.log_every, fast)
        log = torch.zeros(log_every, config.branches + 1, device=device)
        history, steps_seen = [], 0
        images = data.images.to(device)
        pace = Pace(f"PD, K={config.branches}, {config.rounds} rounds", config.rounds * config.iterations)
        start = time.perf_counter()
        step = 0

        def flush(rows: int, rnd: int, n_student: int) -> None:
            """Deliver the last ``rows`` updates' records (one wait for the device per block)."""
            t0 = time.perf_counter()
            block = log[:rows].tolist()
            t1 = time.perf_counter()
            pace.waiting(t1 - t0)
            for j, row in enumerate(block):
                n = step - rows + j + 1
                if not all(map(math.isfinite, row)):
                    raise diverged(row[0], n)
                rec = {"step": float(n), "loss": row[0]}
                rec.update({f"loss_branch_{k + 1}": v for k, v in enumerate(row[1:])})
                rec.update(endpoint_loss=row[-1], round=float(rnd + 1), student_steps=float(n_student))
                history.append(rec)
                if callback is not None:
                    callback(rec)
            pace.delivering(time.perf_counter() - t1)
            pace.done(step)

        for rnd in range(config.rounds):
            n_student = config.teacher_steps // 2 ** (rnd + 1)
            fine = config.grid(2 * n_student).to(device)
            opt = adam(student.parameters(), config.lr, config.optimizer, fused=fast)
            rows = 0
            for it in range(config.iterations):
                for group in opt.param_groups:  # linear annealing within the round
                    group["lr"] = config.lr * (1 - it / config.iterations)
                z, t, mid, s = draw_batch(images, fine, n_student, config.batch_size, g)
                if fast:
                    new_step()
                with no_gc():  # see fast.no_gc
                    per_branch = engine.step(z, t, mid, s)
                    loss = (weights * per_branch).sum()
                    if not fast:
                        check_finite(loss, step + 1)  # eager: before a NaN can reach the weights
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
                opt.step()
                step += 1
                steps_seen += config.batch_size
                log[rows, 0] = loss.detach()
                log[rows, 1:] = per_branch.detach()
                rows += 1
                if rows == log_every or it + 1 == config.iterations:
                    flush(rows, rnd, n_student)
                    rows = 0
            # the student becomes the teacher of the next round (training goes on in `student`)
            engine.load_teacher(student)
            if on_round is not None:
                frozen = copy.deepcopy(student).eval().requires_grad_(False)
                on_round(rnd + 1, n_student, DistillResult(
                    frozen, replace(config, rounds=rnd + 1), teacher, list(history), time.perf_counter() - start,
                    steps_seen, sampler=lambda x, m=frozen, n=n_student: pd_sample(m, x, config, n),
                    solve_with=lambda denoiser, x, n=n_student: pd_sample(denoiser, x, config, n)))
        wall = time.perf_counter() - start
        final = copy.deepcopy(student).eval().requires_grad_(False)
    finally:
        engine.busy = False
    return DistillResult(
        final, config, teacher, history, wall, steps_seen,
        sampler=lambda x: pd_sample(final, x, config, config.nfe),
        solve_with=lambda denoiser, x: pd_sample(denoiser, x, config, config.nfe),
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

    def train(self, teacher, config, *, data=None, bank=None, callback=None, progress=False,
              on_round: RoundCallback | None = None) -> DistillResult:
        """``on_round`` (optional): called after every halving round, see :func:`distill_pd`; without it, a
        ``callback`` object's own ``on_round`` method is used (one object can follow steps and rounds)."""
        on_round = on_round if on_round is not None else getattr(callback, "on_round", None)
        if data is None:
            raise ValueError("progressive distillation trains on data images: pass data=load_images(...)")
        return distill_pd(teacher, config, data, callback=callback, progress=progress, on_round=on_round)

    def for_study(self, config: PDConfig, k_choices: tuple[int, ...], nfe: int | None = None) -> PDConfig:
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
        if nfe is not None and nfe != config.nfe:
            raise ValueError(f"a progressive-distillation trial runs at its study's NFE {config.nfe}, not {nfe}")
        return replace(config, branches=branches, weights=weights, seed=seed)

    def settings(self, config: PDConfig) -> dict:
        return dict(teacher_steps=config.teacher_steps, rounds=config.rounds, distance=config.distance,
                    gamma=config.gamma)


register(PD())
