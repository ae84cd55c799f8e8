"""SFD-style trajectory distillation with B-DENSE branches (paper Algorithm 4; SFD, Zhou et al. 2024).

The teacher solves the whole PF-ODE path on a polynomial grid with S sub-steps inside each student interval,
so the student's timestamps lie on the teacher's grid. For each student interval in turn the student makes
one evaluation at ``t_i``; branch k Euler-jumps from ``x_{t_i}`` to ``tau_k`` (the teacher grid point after
``k S / K`` sub-steps) and is compared with the teacher's state there by L1; the branch losses are summed
with weights ``w_k``; one optimiser update per interval; the endpoint branch's output, detached, starts the
next interval. K = 1 is plain SFD. With AFS the first interval uses ``d = x / sqrt(1 + sigma^2)`` instead
of a network call, so NFE = intervals - 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..edm import SOLVERS, karras_sigmas, solve
from ..runtime import autocast, generator
from ..schedule import BranchWeights
from ..teacher import Teacher
from .common import DistillResult, StepCallback, adam, branch_record, check_finite, make_student
from .registry import Framework, register


@dataclass(frozen=True)
class SFDConfig:
    nfe: int = 2
    branches: int = 4  # K
    teacher_substeps: int = 4  # S, teacher steps per student interval; K must divide S
    weights: BranchWeights = field(default_factory=BranchWeights)
    afs: bool = True
    iterations: int = 200
    batch_size: int = 64
    lr: float = 5e-5
    lr_drop_at: float = 0.5  # the lr is divided by 10 after this fraction of the iterations (SFD)
    teacher_solver: str = "dpmpp3"
    sigma_min: float = 0.006
    sigma_max: float = 80.0
    rho: float = 7.0
    seed: int = 0
    amp: bool = False  # bf16 autocast for the student on CUDA

    def __post_init__(self):
        if self.nfe < 1:
            raise ValueError(f"NFE must be >= 1, got {self.nfe}")
        if self.branches < 1:
            raise ValueError(f"K (branches) must be >= 1, got {self.branches}")
        if self.teacher_substeps < 1:
            raise ValueError(f"teacher sub-steps S must be >= 1, got {self.teacher_substeps}")
        if self.teacher_substeps % self.branches:
            divisors = [k for k in range(1, self.teacher_substeps + 1) if self.teacher_substeps % k == 0]
            raise ValueError(
                f"K={self.branches} does not divide the teacher's sub-steps S={self.teacher_substeps}; "
                f"choose K in {divisors} or set S to a multiple of K"
            )
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.teacher_solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.teacher_solver!r}; choose one of {', '.join(SOLVERS)}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        self.weights.weights(self.branches)  # validates free weights against K

    @property
    def intervals(self) -> int:
        return self.nfe + (1 if self.afs else 0)

    def teacher_grid(self) -> torch.Tensor:
        """The teacher's sigma grid, ``intervals * S + 1`` points from sigma_max to sigma_min."""
        return karras_sigmas(self.intervals * self.teacher_substeps, self.sigma_min, self.sigma_max, self.rho,
                             append_zero=False)

    def branch_indices(self, interval: int) -> list[int]:
        """Teacher-grid indices of ``tau_1 .. tau_K`` inside student interval ``interval``."""
        s, k = self.teacher_substeps, self.branches
        return [interval * s + j * s // k for j in range(1, k + 1)]


@dataclass
class TrajectoryBank:
    """Teacher trajectories computed once and shared by many students (all of one study's trials).

    ``states[:, c]`` is the teacher's state at grid point ``points[c]``; ``points[0] == 0`` (``x_T``). A
    bank keeps only the grid points that some branch count can target (``needed_points``), not the
    whole path, so a large bank fits next to several worker processes on one GPU.
    """

    states: torch.Tensor  # [N, len(points), C, H, W]
    grid: torch.Tensor
    points: tuple[int, ...] | None = None  # grid indices held, None: every grid point

    def __post_init__(self):
        if self.points is None:
            self.points = tuple(range(self.states.shape[1]))
        if len(self.points) != self.states.shape[1] or self.points[0] != 0:
            raise ValueError("a trajectory bank's points must start at 0 (x_T) and match its states")
        self._column = {p: c for c, p in enumerate(self.points)}

    def __len__(self) -> int:
        return self.states.shape[0]

    def columns(self, indices: list[int]) -> list[int]:
        try:
            return [self._column[i] for i in indices]
        except KeyError as e:
            raise ValueError(f"the trajectory bank holds no teacher state at grid point {e.args[0]} "
                             f"(built for other branch counts)") from None

    def batch(self, n: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(self), (n,), generator=g, device=g.device).to(self.states.device)
        return self.states[idx].float()


def needed_points(config: SFDConfig, k_choices: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Grid indices a student with any K in ``k_choices`` (default: ``config.branches``) is trained on."""
    from dataclasses import replace

    pts = {0}
    for k in k_choices or (config.branches,):
        cfg = replace(config, branches=k)
        for i in range(1 if config.afs else 0, config.intervals):
            pts.update(cfg.branch_indices(i))
    return tuple(sorted(pts))


@torch.no_grad()
def teacher_trajectories(teacher: Teacher, x_T: torch.Tensor, config: SFDConfig) -> torch.Tensor:
    """The teacher's states at every point of ``config.teacher_grid()``: ``[B, points, C, H, W]``."""
    grid = config.teacher_grid().to(x_T.device)
    _, states = solve(teacher.denoiser, x_T, grid, config.teacher_solver, return_states=True)
    return states


@torch.no_grad()
def build_trajectory_bank(
    teacher: Teacher, n: int, config: SFDConfig, seed: int, batch_size: int = 256,
    dtype: torch.dtype = torch.float32, device: torch.device | None = None,
    k_choices: tuple[int, ...] | None = None,
) -> TrajectoryBank:
    """``n`` teacher trajectories for every trial that shares ``config``'s grid (NFE, AFS, S, sigmas).

    With ``k_choices`` only the grid points those branch counts need are kept. The teacher's network runs
    under bf16 autocast when ``config.amp`` is set on CUDA (the solver's state updates stay fp32).
    """
    g = generator(seed, teacher.device)
    points = needed_points(config, k_choices) if k_choices else None
    chunks = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x_T = torch.randn((b, *teacher.image_shape), generator=g, device=teacher.device) * config.sigma_max
        with autocast(teacher.device, config.amp):
            states = teacher_trajectories(teacher, x_T, config).float()
        if points is not None:
            states = states[:, list(points)]
        chunks.append(states.to(dtype=dtype, device=device or teacher.device))
    return TrajectoryBank(torch.cat(chunks), config.teacher_grid(), points)


def bank_key(teacher_key: str, config: SFDConfig, n: int, seed: int, k_choices: tuple[int, ...] | None) -> str:
    """A file name for a bank: the teacher, the grid, the points, the size and the seed decide it."""
    import hashlib

    what = (teacher_key, config.intervals, config.teacher_substeps, config.teacher_solver, config.sigma_min,
            config.sigma_max, config.rho, config.amp, n, seed, needed_points(config, k_choices) if k_choices else None)
    return "bank-" + hashlib.sha256(repr(what).encode()).hexdigest()[:16] + ".pt"


def cached_trajectory_bank(
    teacher: Teacher, n: int, config: SFDConfig, seed: int, root, k_choices: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float16,
) -> TrajectoryBank:
    """:func:`build_trajectory_bank`, saved under ``root/banks`` and loaded from there by every later process
    (the workers of a study load the bank their parent built instead of solving the teacher again)."""
    import os
    from pathlib import Path

    path = Path(root) / "banks" / bank_key(teacher.key, config, n, seed, k_choices)
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return TrajectoryBank(saved["states"].to(teacher.device), saved["grid"], tuple(saved["points"]))
        except Exception:  # noqa: BLE001 - a torn file from a killed process: build it again
            pass
    bank = build_trajectory_bank(teacher, n, config, seed, dtype=dtype, k_choices=k_choices)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"states": bank.states.cpu(), "grid": bank.grid.cpu(), "points": list(bank.points)}, tmp)
    os.replace(tmp, path)
    return bank


def _identity(indices: list[int]) -> list[int]:
    return indices


def sfd_sample(student, x: torch.Tensor, config: SFDConfig) -> torch.Tensor:
    """The student's few-step sampler: AFS (if on), then one Euler step per interval with branch K."""
    grid = config.teacher_grid().to(x.device)
    s = config.teacher_substeps
    for i in range(config.intervals):
        t, t_next = grid[i * s], grid[(i + 1) * s]
        if i == 0 and config.afs:
            d = x / torch.sqrt(1 + t**2)
        else:
            d = (x - student(x, t)) / t
        x = x + (t_next - t) * d
    return x


def distill_sfd(
    teacher: Teacher,
    config: SFDConfig,
    bank: TrajectoryBank | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> DistillResult:
    """Train a K-branch student with SFD + B-DENSE. With ``bank`` the teacher's paths come from it."""
    device = teacher.device
    grid = config.teacher_grid().to(device)
    if bank is not None and (bank.grid.shape != grid.shape or not torch.allclose(bank.grid.to(device), grid)):
        raise ValueError("the trajectory bank was built for another grid (NFE, AFS, S or sigma range differ)")
    if bank is not None:
        for i in range(1 if config.afs else 0, config.intervals):
            bank.columns(config.branch_indices(i))  # fails now, not in the middle of training
    student = make_student(teacher.denoiser, config.branches)
    opt = adam(student.parameters(), config.lr)
    weights = config.weights.weights(config.branches).to(device)
    g = generator(config.seed, device)
    s = config.teacher_substeps
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.iterations, desc=f"SFD K={config.branches}", leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    for it in range(config.iterations):
        if it == int(config.lr_drop_at * config.iterations):
            for group in opt.param_groups:
                group["lr"] = config.lr / 10 if it > 0 else config.lr
        if bank is not None:
            states = bank.batch(config.batch_size, g)
            cols = bank.columns
        else:
            x_T = torch.randn((config.batch_size, *teacher.image_shape), generator=g, device=device) * config.sigma_max
            states = teacher_trajectories(teacher, x_T, config)
            cols = _identity
        x = states[:, 0]
        totals, branch_sums, endpoint = [], torch.zeros(config.branches), []
        for i in range(config.intervals):
            t = grid[i * s]
            if i == 0 and config.afs:
                x = x + (grid[s] - t) * x / torch.sqrt(1 + t**2)
                continue
            idx = config.branch_indices(i)
            taus = grid[idx].view(1, -1, 1, 1, 1)
            with autocast(device, config.amp):
                denoised = student.all_branches(x, t)  # [B, K, C, H, W]
            jumps = x.unsqueeze(1) + (taus - t) * (x.unsqueeze(1) - denoised) / t
            # L1 summed over pixels, averaged over the batch: one value per branch
            per_branch = (jumps - states[:, cols(idx)]).abs().flatten(2).sum(2).mean(0)
            loss = (weights * per_branch).sum()
            check_finite(loss, it + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            x = jumps[:, -1].detach()
            totals.append(loss.detach())
            branch_sums += per_branch.detach().cpu()
            endpoint.append(per_branch[-1].detach())
        n_trained = len(totals)
        rec = branch_record(
            it + 1, torch.stack(totals).mean(), branch_sums / n_trained,
            endpoint_l1=float(torch.stack(endpoint).mean()) / math.prod(teacher.image_shape),
        )
        history.append(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if callback is not None:
            callback(rec)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    student.eval().requires_grad_(False)
    return DistillResult(
        student, config, teacher, history, wall, config.iterations * config.batch_size,
        sampler=lambda x: sfd_sample(student, x, config),
    )


@torch.no_grad()
def endpoint_error(student, teacher: Teacher, config: SFDConfig, n: int = 64, seed: int = 12345) -> float:
    """Mean absolute pixel error of the student's final sample against the teacher's, from the same x_T."""
    g = generator(seed, teacher.device)
    x_T = torch.randn((n, *teacher.image_shape), generator=g, device=teacher.device) * config.sigma_max
    target = teacher_trajectories(teacher, x_T, config)[:, -1]
    return float((sfd_sample(student, x_T, config) - target).abs().mean())


def _lcm(values) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


class SFD(Framework):
    """SFD + B-DENSE: the teacher's sub-steps S are the lcm of every K choice, so all trials see one grid."""

    name = "sfd"
    config_type = SFDConfig
    description = "SFD trajectory distillation with B-DENSE branches (paper Algorithm 4)"
    uses_bank = True
    nfe_per_trial = True
    prune_metric = "endpoint_l1"

    def train(self, teacher, config, *, data=None, bank=None, callback=None, progress=False) -> DistillResult:
        return distill_sfd(teacher, config, bank=bank, callback=callback, progress=progress)

    def for_study(self, config: SFDConfig, k_choices: tuple[int, ...], nfe: int | None = None) -> SFDConfig:
        from dataclasses import replace

        s = _lcm([config.teacher_substeps, *k_choices])
        return replace(config, nfe=config.nfe if nfe is None else nfe, branches=max(k_choices), teacher_substeps=s)

    def for_trial(self, config: SFDConfig, *, branches: int, weights: BranchWeights, seed: int,
                  nfe: int | None = None) -> SFDConfig:
        from dataclasses import replace

        return replace(config, nfe=config.nfe if nfe is None else nfe, branches=branches, weights=weights, seed=seed)

    def settings(self, config: SFDConfig) -> dict:
        return dict(teacher_substeps=config.teacher_substeps, afs=config.afs, teacher_solver=config.teacher_solver)

    def shared_paths(self, teacher, config: SFDConfig, *, size: int, seed: int, root, k_choices: tuple[int, ...]):
        if size <= 0:
            return None
        return cached_trajectory_bank(teacher, size, config, seed=seed, root=root, k_choices=tuple(k_choices))


register(SFD())
