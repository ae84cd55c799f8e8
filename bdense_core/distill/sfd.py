"""SFD-style trajectory distillation with B-DENSE branches (paper Algorithm 4; SFD, Zhou et al. 2024).

The teacher solves the whole PF-ODE path on a polynomial grid with S sub-steps inside each student interval,
so the student's timestamps lie on the teacher's grid. For each student interval in turn the student makes
one evaluation at ``t_i``; branch k Euler-jumps from ``x_{t_i}`` to ``tau_k`` (the teacher grid point after
``k S / K`` sub-steps) and is compared with the teacher's state there by L1; the branch losses are summed
with weights ``w_k``; one optimiser update per interval; the endpoint branch's output, detached, starts the
next interval. K = 1 is plain SFD. With AFS the first interval uses ``d = x / sqrt(1 + sigma^2)`` instead
of a network call, so NFE = intervals - 1.

Training runs N students at once (:func:`train_sfd_many`; one student is N = 1):

- **Batched students.** The N students are one :class:`~.stack.StudentStack` (stacked weights, vmap), each
  with its own K, branch weights and seed. The head has ``head`` branch groups for everyone (the group's
  largest K on the eager path, S on the fast path, so one compiled graph serves every K of a study); a
  student with K < head uses groups 1..K, the other groups get weight 0 (no gradient, never change) and are
  dropped when the student is handed back, so it equals a K-branch student trained alone.
- **Seeds.** A student's seed sets its teacher paths and their order: fresh paths draw x_T from the seed's
  generator every iteration; from a bank the rows are drawn without replacement (a seeded permutation per
  pass over the bank), so a bank of ``iterations * batch_size`` paths is used once each. Students with the
  same seed and the same bank share one path stream; different seeds draw their own. The caller builds one
  bank per seed (``cached_trajectory_bank(..., seed=trial_seed)``) or passes one bank to every seed; a study
  doing the latter must record that its bank is "shared".
- **The K-branch loss** is one batched tensor operation over students and branches (:func:`branch_losses`).
- **No host synchronisation in the loop.** Per-iteration losses accumulate in a device buffer that is read
  once every ``log_every`` iterations (default 20 on the fast path, every iteration on the eager path); the
  records are then delivered to the callbacks in a burst and checked for NaN/inf there (DivergenceError for
  that student, whose slot stops training). A pruner thus sees a student's records up to ``log_every - 1``
  iterations late; the records themselves are the same whatever ``log_every`` is.
- **Large banks.** A bank above :data:`BANK_GPU_BYTES` lives in host memory (mapped from its file, so the workers
  of a machine share one copy in the page cache); a group training from it gets a GPU copy of only the columns
  its branch counts need (:func:`banks_for_device`), the same rows in the same order, and draws on the host only
  when that copy does not fit. Several GPUs can solve one bank in parts
  (:func:`cached_bank_part`): the parts start on noise chunks, so joined they are the bank solved whole.
- **Fast path** (CUDA, ``SFDConfig.fast``, default on): the interval step (student forward, jumps, losses) is
  compiled with CUDA graphs under bf16 autocast, the optimiser is fused Adam, and the compiled engine is
  cached per process by (architecture, N, head, batch): a new trial copies the teacher's weights into its
  persistent buffers and gets a fresh optimiser, so compilation is paid once per worker.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

try:
    import fcntl  # POSIX: the lock that lets one process build a bank others wait for
except ImportError:  # pragma: no cover - not POSIX: banks may be built twice, never torn (atomic replace)
    fcntl = None

import torch
from torch import nn

from ..edm import SOLVERS, grid_values, karras_sigmas, solve
from ..fast import (SAMPLE_BATCH, compile_mode, compiled, force_layout_opt, new_step, no_gc, sampling_engine,
                    use_fast, without_cudagraphs)
from ..networks import select_branches
from ..runtime import autocast, generator
from ..schedule import BranchWeights
from ..teacher import Teacher, noise_batches
from .common import DistillResult, Pace, StepCallback, adam, diverged, log_interval, make_student, pace_log
from .registry import Framework, per_config, register
from .stack import StudentStack


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
    seed: int = 0  # sets the teacher paths a student trains on and their order
    amp: bool = False  # eager path: bf16 autocast for the student (and the bank's teacher) on CUDA
    fast: bool = True  # CUDA: compiled bf16 training and sampling (the CPU always runs eager); False: eager
    teacher_bf16: bool = True  # fast path: the teacher's paths on the compiled sampler in bf16 (False: fp32)
    log_every: int | None = None  # records are read from the device every this many iterations (None: 20 fast, 1 eager)

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
        if self.log_every is not None and self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
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
        """The teacher's sigma grid, ``intervals * S + 1`` points from sigma_max to sigma_min (on the CPU)."""
        return karras_sigmas(self.intervals * self.teacher_substeps, self.sigma_min, self.sigma_max, self.rho,
                             append_zero=False)

    def branch_indices(self, interval: int) -> list[int]:
        """Teacher-grid indices of ``tau_1 .. tau_K`` inside student interval ``interval``."""
        s, k = self.teacher_substeps, self.branches
        return [interval * s + j * s // k for j in range(1, k + 1)]

    def trained_intervals(self) -> range:
        """The intervals with a network call (all but the first under AFS)."""
        return range(1 if self.afs else 0, self.intervals)


@dataclass
class TrajectoryBank:
    """Teacher trajectories computed once and shared by many students.

    ``states[:, c]`` is the teacher's state at grid point ``points[c]``; ``points[0] == 0`` (``x_T``). A
    bank keeps only the grid points that some branch count can target (``needed_points``), not the
    whole path, so a large bank fits next to several worker processes on one GPU. Students draw its rows
    through a :class:`PathStream` (without replacement, in the order their seed gives).
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

    def check(self, config: SFDConfig) -> None:
        """ValueError (one line) unless this bank serves ``config``: same grid, every branch target held."""
        grid = config.teacher_grid()
        if self.grid.shape != grid.shape or not torch.allclose(self.grid.cpu().to(grid.dtype), grid):
            raise ValueError("the trajectory bank was built for another grid (NFE, AFS, S or sigma range differ)")
        for i in config.trained_intervals():
            self.columns(config.branch_indices(i))


class PathStream:
    """One seed's teacher paths: bank rows without replacement, or fresh x_T, from the seed's own generator.

    From a bank, each pass over it is a fresh seeded permutation and a batch that crosses the end of a pass
    continues into the next one, so every row is used once per pass. Nothing here waits for the device.
    """

    def __init__(self, seed: int, bank: TrajectoryBank | None, device: torch.device):
        self.bank = bank
        self.g = generator(seed, bank.states.device if bank is not None else device)
        self._perm: torch.Tensor | None = None
        self._pos = 0

    def serve_from(self, bank: TrajectoryBank) -> None:
        """Draw from ``bank`` from now on: the same rows as the bank this stream was made for (fewer columns,
        perhaps on another device). The permutations still come from the seed's generator on the first bank's
        device, so the rows drawn do not depend on where the states are; each pass's permutation is moved to
        the new bank's device once."""
        if len(bank) != len(self.bank):
            raise ValueError("a stream can only move to a bank with the same rows")
        self.bank = bank

    def rows(self, n: int) -> torch.Tensor:
        """The next ``n`` bank rows (indices on the bank's device)."""
        parts = []
        while n > 0:
            if self._perm is None or self._pos == len(self._perm):
                perm = torch.randperm(len(self.bank), generator=self.g, device=self.g.device)
                self._perm = perm.to(self.bank.states.device)
                self._pos = 0
            take = min(n, len(self._perm) - self._pos)
            parts.append(self._perm[self._pos:self._pos + take])
            self._pos += take
            n -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def x_T(self, n: int, shape, sigma_max: float) -> torch.Tensor:
        """Fresh ``x_T = sigma_max * randn`` for ``n`` paths."""
        return torch.randn((n, *shape), generator=self.g, device=self.g.device) * sigma_max


def needed_points(config: SFDConfig, k_choices: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Grid indices a student with any K in ``k_choices`` (default: ``config.branches``) is trained on."""
    pts = {0}
    for k in k_choices or (config.branches,):
        cfg = replace(config, branches=k)
        for i in config.trained_intervals():
            pts.update(cfg.branch_indices(i))
    return tuple(sorted(pts))


@torch.no_grad()
def teacher_trajectories(teacher: Teacher, x_T: torch.Tensor, config: SFDConfig, fast: bool | None = False,
                         amp: bool = False) -> torch.Tensor:
    """The teacher's states at every point of ``config.teacher_grid()``: ``[B, points, C, H, W]`` (fp32).

    ``fast`` (None: ``config.fast``) runs the teacher on the process's compiled sampler for this batch size on
    CUDA, in bf16 unless ``config.teacher_bf16`` is off; otherwise eagerly, under bf16 autocast if ``amp`` (CUDA
    only)."""
    grid = config.teacher_grid()
    if use_fast(x_T.device, config.fast if fast is None else fast):
        engine = sampling_engine(teacher.denoiser, batch=x_T.shape[0], bf16=config.teacher_bf16)
        _, states = solve(engine, x_T, grid, config.teacher_solver, return_states=True)
        return states
    with autocast(x_T.device, amp):
        _, states = solve(teacher.denoiser, x_T, grid, config.teacher_solver, return_states=True)
    return states.float()


@torch.no_grad()
def build_trajectory_bank(
    teacher: Teacher, n: int, config: SFDConfig, seed: int, batch_size: int = 256,
    dtype: torch.dtype = torch.float32, device: torch.device | None = None,
    k_choices: tuple[int, ...] | None = None, first: int = 0,
) -> TrajectoryBank:
    """``n`` teacher trajectories for every trial that shares ``config``'s grid (NFE, AFS, S, sigmas).

    Path i starts from row i of ``seed``'s noise (:func:`bdense_core.teacher.noise_batches`), whatever the
    batch size; ``first`` (a multiple of ``teacher.NOISE_CHUNK``) solves only paths ``first..n-1``, a part of
    the bank (:func:`cached_bank_part`). With ``k_choices`` only the grid points those branch counts need are kept. On CUDA with
    ``config.fast`` the teacher runs on the compiled bf16 sampler (batches of ``fast.SAMPLE_BATCH``);
    eagerly it runs in batches of ``batch_size``, under bf16 autocast when ``config.amp`` is set on CUDA (the
    solver's state updates stay fp32 either way).
    """
    fast = use_fast(teacher.device, config.fast)
    batch = SAMPLE_BATCH if fast else batch_size
    g = generator(seed, teacher.device)
    points = needed_points(config, k_choices) if k_choices else None
    chunks = []
    for x_T, rows in noise_batches(n, teacher.image_shape, config.sigma_max, g, batch, pad=fast, first=first):
        states = teacher_trajectories(teacher, x_T, config, fast=fast, amp=config.amp)[:rows]
        if points is not None:
            states = states[:, list(points)]
        chunks.append(states.to(dtype=dtype, device=device or teacher.device))
    return TrajectoryBank(torch.cat(chunks), config.teacher_grid(), points)


def bank_key(teacher_key: str, config: SFDConfig, n: int, seed: int, k_choices: tuple[int, ...] | None,
             fast: bool = False) -> str:
    """A file name for a bank: the teacher, the grid, the points, the size, the seed and the path (fast or
    eager, amp) that computed it decide it."""
    import hashlib

    what = ("v2", teacher_key, config.intervals, config.teacher_substeps, config.teacher_solver, config.sigma_min,
            config.sigma_max, config.rho, config.amp, fast, n, seed,
            needed_points(config, k_choices) if k_choices else None)
    if fast and not config.teacher_bf16:  # the keys of bf16 banks stay what they were
        what += ("teacher fp32",)
    return "bank-" + hashlib.sha256(repr(what).encode()).hexdigest()[:16] + ".pt"


def cached_trajectory_bank(
    teacher: Teacher, n: int, config: SFDConfig, seed: int, root, k_choices: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float16, wait: bool = True,
) -> TrajectoryBank | None:
    """:func:`build_trajectory_bank`, saved under ``root/banks`` and loaded from there by every later process
    (the workers of a study load the bank their parent built instead of solving the teacher again). One file
    per seed: trials of different seeds train on different paths.

    Processes sharing ``root`` build each bank once: the builder holds a lock on the bank's ``.lock`` file, and
    another process that needs the bank waits for it and loads the file; with ``wait=False`` it returns None at
    once instead (it may build another bank meanwhile: :meth:`study.workers.Banks.prefetch`)."""
    import os

    path = bank_path(teacher, n, config, seed, root, k_choices)
    points = needed_points(config, k_choices) if k_choices else range(config.teacher_grid().numel())
    place = bank_device(teacher.device, n * len(points) * math.prod(teacher.image_shape) * dtype.itemsize)
    bank = _load_bank(path, place)
    if bank is not None:
        return bank
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        if not _lock(lock, wait):
            return None
        try:
            bank = _load_bank(path, place)  # built by the process this one waited for
            if bank is not None:
                return bank
            bank = place_bank(build_trajectory_bank(teacher, n, config, seed, dtype=dtype, device=place,
                                                    k_choices=k_choices), place)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"states": bank.states.cpu(), "grid": bank.grid.cpu(), "points": list(bank.points)}, tmp)
            os.replace(tmp, path)
            return bank
        finally:
            _unlock(lock)


def bank_path(teacher: Teacher, n: int, config: SFDConfig, seed: int, root, k_choices: tuple[int, ...] | None):
    """Where :func:`cached_trajectory_bank` keeps this bank."""
    from pathlib import Path

    return Path(root) / "banks" / bank_key(teacher.key, config, n, seed, k_choices, use_fast(teacher.device, config.fast))


def part_rows(n: int, part: int, parts: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of part ``part`` (0-based) of a bank of ``n`` paths solved in ``parts`` parts: about
    equal, each starting on a noise chunk (``teacher.NOISE_CHUNK``)."""
    from ..teacher import NOISE_CHUNK

    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: give 0 <= part < parts")
    if n < parts * NOISE_CHUNK:
        raise ValueError(f"a bank of {n:,} paths is too small to solve in {parts} parts (each part starts on a noise "
                         f"chunk of {NOISE_CHUNK}); solve it whole")
    cut = lambda i: min(n, round(i * n / parts / NOISE_CHUNK) * NOISE_CHUNK)  # noqa: E731
    return cut(part), (n if part == parts - 1 else cut(part + 1))


@torch.no_grad()
def cached_bank_part(teacher: Teacher, n: int, config: SFDConfig, seed: int, root, part: int, parts: int,
                     k_choices: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float16) -> str:
    """Solve part ``part`` of ``parts`` of :func:`cached_trajectory_bank`'s bank (rows :func:`part_rows`), save it
    beside the bank, and when every part is there join them into the bank file itself, which every process then
    loads as if one process had solved it (the same rows, the same key). Several GPUs solve one bank so; the
    study's workers must start after the join (before it they would solve the bank themselves). Returns what
    it did, in words."""
    import os

    path = bank_path(teacher, n, config, seed, root, k_choices)
    if path.exists():
        return f"the bank is there already ({path.name})"
    start, stop = part_rows(n, part, parts)
    mine = path.with_name(f"{path.name}.part{part}of{parts}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not mine.exists():
        bank = build_trajectory_bank(teacher, stop, config, seed, dtype=dtype, device=torch.device("cpu"),
                                     k_choices=k_choices, first=start)
        tmp = mine.with_name(f"{mine.name}.{os.getpid()}.tmp")
        torch.save({"states": bank.states, "grid": bank.grid.cpu(), "points": list(bank.points)}, tmp)
        os.replace(tmp, mine)
    return f"part {part + 1} of {parts} (paths {start:,} to {stop - 1:,}) saved; " + join_bank_parts(path, n, parts)


def join_bank_parts(path, n: int, parts: int) -> str:
    """Join the ``parts`` part files of the bank at ``path`` into it once all are there (under the bank's lock)."""
    import os

    files = [path.with_name(f"{path.name}.part{i}of{parts}") for i in range(parts)]
    missing = sum(not f.exists() for f in files)
    if missing:
        return f"{missing} part(s) still to come"
    with open(path.with_suffix(".lock"), "a") as lock:
        _lock(lock, True)
        try:
            if not path.exists():
                saved = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
                states = torch.cat([p["states"] for p in saved])
                if len(states) != n or len({tuple(p["points"]) for p in saved}) != 1:
                    raise ValueError(f"the parts of {path.name} hold {len(states)} paths of {n}, or other points")
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                torch.save({"states": states, "grid": saved[0]["grid"], "points": saved[0]["points"]}, tmp)
                os.replace(tmp, path)
            for f in files:
                f.unlink(missing_ok=True)
        finally:
            _unlock(lock)
    return f"the {parts} parts joined into {path.name}"


# A bank larger than this stays in host memory and its batches are copied to the GPU as they are drawn:
# the banks of SFD's full budget (200,064 paths of 32x32, fp16, K in {1, 2, 3, 4, 6, 8} at S = 24) take 9.5 GiB at
# NFE 2, 14.1 at NFE 3, 18.7 at NFE 4 and 23.3 at NFE 5 (so from NFE 3 on they stay on the host), and a trial of
# three seeds holds three. A fixed size, not the free memory, decides, so a seed draws the same rows on every
# machine (a bank's rows are permuted by a generator on the bank's device).
BANK_GPU_BYTES = 12 * 2**30


def bank_device(teacher_device: torch.device | str, nbytes: int) -> torch.device:
    """Where a bank of ``nbytes`` lives: with the teacher, or on the host above :data:`BANK_GPU_BYTES`."""
    teacher_device = torch.device(teacher_device)
    return torch.device("cpu") if teacher_device.type != "cpu" and nbytes > BANK_GPU_BYTES else teacher_device


def place_bank(bank: TrajectoryBank, device: torch.device) -> TrajectoryBank:
    """``bank`` on ``device``. A host bank stays in pageable memory (a loaded one mapped from its file,
    :func:`_load_bank`), never pinned: its draws are gathered into pinned buffers (:class:`PathDraws`) and its GPU
    subsets are copied in chunks (:func:`bank_subset`), so pinning the whole bank bought nothing but its cost
    (session 16, one H200: a worker took 1 min 37 s from its start to its first group and was pinning its three
    14.1 GiB NFE-3 banks when its stack was sampled 60 s in), and every worker on a machine held its own copy."""
    return TrajectoryBank(bank.states.to(device), bank.grid, bank.points)


# What a group of students trains on from a host bank is copied to the GPU when it fits with this much to spare:
# only the bank's columns the group's branch counts need (K = 6 at NFE 3 needs 19 of the 37 points of a study's
# bank), so the draws are indexed on the GPU as from a small bank. Rows and values are those of the host path
# (the permutations stay on the host bank's generator); set to None to keep every draw on the host.
SUBSET_GPU_SPARE = 6 * 2**30


def bank_subset(bank: TrajectoryBank, points: tuple[int, ...], device: torch.device,
                chunk_bytes: int = 2**30) -> TrajectoryBank:
    """The columns of ``bank`` at grid ``points`` (which must include 0), as a bank on ``device``: its rows are
    copied in contiguous chunks of about ``chunk_bytes`` and the columns are picked there."""
    cols = bank.columns(list(points))
    n = len(bank)
    out = torch.empty((n, len(cols), *bank.states.shape[2:]), dtype=bank.states.dtype, device=device)
    per_row = bank.states[:1].numel() * bank.states.element_size()
    step = max(1, chunk_bytes // per_row)
    idx = torch.tensor(cols, device=device)
    for r in range(0, n, step):
        part = bank.states[r:r + step].to(device, non_blocking=False)
        torch.index_select(part, 1, idx, out=out[r:r + step])
    return TrajectoryBank(out, bank.grid, tuple(points))


def group_points(configs) -> tuple[int, ...]:
    """The grid points a group of students trains on (0, x_T, included)."""
    pts = {0}
    for cfg in configs:
        for i in cfg.trained_intervals():
            pts.update(cfg.branch_indices(i))
    return tuple(sorted(pts))


def banks_for_device(configs, banks, device: torch.device) -> tuple[list, str]:
    """The banks a group trains from on ``device``: host banks replaced by GPU copies of the columns the group
    needs when all of them fit with :data:`SUBSET_GPU_SPARE` to spare; else unchanged. Also says which."""
    host = {id(b): b for b in banks if b is not None and b.states.device.type == "cpu"}
    if not host or device.type != "cuda" or SUBSET_GPU_SPARE is None:
        return list(banks), "host" if host else "device"
    points = group_points(configs)
    b0 = next(iter(host.values()))
    nbytes = sum(len(b) * len(points) * b.states[:1, :1].numel() * b.states.element_size() for b in host.values())
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes + SUBSET_GPU_SPARE > free:
        return list(banks), (f"host ({len(host)} bank(s): their {len(points)} of {len(b0.points)} points need "
                             f"{nbytes / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)")
    sub = {k: bank_subset(b, points, device) for k, b in host.items()}
    return ([sub.get(id(b), b) if b is not None else None for b in banks],
            f"GPU subset ({len(host)} host bank(s): {len(points)} of {len(b0.points)} points, {nbytes / 2**30:.1f} GiB)")


def _load_bank(path, device: torch.device) -> TrajectoryBank | None:
    if not path.exists():
        return None
    try:
        # mmap: a host bank's pages are read from the page cache as they are used, shared by every process that
        # loads the same file, instead of being read and copied in whole first
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return place_bank(TrajectoryBank(saved["states"], saved["grid"], tuple(saved["points"])), device)
    except Exception:  # noqa: BLE001 - a torn file from a killed process: build it again
        return None


def _lock(f, wait: bool) -> bool:
    """An exclusive lock on the open file ``f`` (held until :func:`_unlock` or the process ends); False when
    ``wait`` is off and another process holds it. Without fcntl (not POSIX) there is no lock: always True."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _unlock(f) -> None:
    if fcntl is not None:
        fcntl.flock(f, fcntl.LOCK_UN)


def afs_step(x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """SFD's analytical first step: Euler with ``d = x / sqrt(1 + t^2)`` instead of a network call."""
    return x + (t_next - t) * x / math.sqrt(1 + t * t)


def sfd_sample(student, x: torch.Tensor, config: SFDConfig) -> torch.Tensor:
    """The student's few-step sampler: AFS (if on), then one Euler step per interval with branch K."""
    vals, dev = grid_values(config.teacher_grid(), x.device)
    s = config.teacher_substeps
    for i in range(config.intervals):
        t, t_next = vals[i * s], vals[(i + 1) * s]
        if i == 0 and config.afs:
            x = afs_step(x, t, t_next)
        else:
            x = x + (t_next - t) * (x - student(x, dev[i * s])) / t
    return x


def branch_losses(x: torch.Tensor, t: torch.Tensor, taus: torch.Tensor, denoised: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every branch's Euler jump and L1 loss in one tensor operation (any leading dims ``...``, e.g. students).

    ``x``: ``[..., B, C, H, W]`` at sigma ``t``; ``taus``: ``[..., K]``; ``denoised`` and ``targets``:
    ``[..., B, K, C, H, W]``. Branch k jumps to ``x + (tau_k - t) (x - denoised_k) / t``; its loss is the
    L1 distance to ``targets[..., k]`` summed over pixels and averaged over the batch. Returns
    ``(jumps [..., B, K, C, H, W], per_branch [..., K])``.
    """
    xk = x.unsqueeze(-4)
    tau = taus[..., None, :, None, None, None]
    jumps = xk + (tau - t) * (xk - denoised) / t
    per_branch = (jumps - targets).abs().flatten(-3).sum(-1).mean(-2)
    return jumps, per_branch


class SFDStep(nn.Module):
    """One student interval for N students: forward, K jumps, branch losses; what one optimiser update needs.

    ``forward(x [N,B,C,H,W], t 0-d, taus [N,H], targets [N,H,B,C,H,W], weights [N,H], end [N])`` returns
    ``(loss, stats, x_next)``: the loss summed over students (each student's weighted branch sum), per-student
    ``stats [N, H + 2]`` = (weighted loss, the H branch losses, the endpoint branch's loss), and each
    student's endpoint jump ``x_next [N,B,C,H,W]`` (detached), branch ``end[n]`` of student n.
    """

    def __init__(self, stack: StudentStack, bf16: bool):
        super().__init__()
        self.stack = stack
        self.bf16 = bf16

    def forward(self, x, t, taus, targets, weights, end):
        with autocast(x.device, self.bf16):
            denoised = self.stack(x, t)
        jumps, per_branch = branch_losses(x, t, taus, denoised, targets.transpose(1, 2).float())
        weighted = weights * per_branch
        x_next = torch.take_along_dim(jumps, end.view(-1, 1, 1, 1, 1, 1), dim=2).squeeze(2)
        stats = torch.cat([weighted.sum(1, keepdim=True), per_branch, per_branch.gather(1, end[:, None])], 1)
        return weighted.sum(), stats.detach(), x_next.detach()


class SFDEngine:
    """The persistent training state of N students of one architecture: stacked weights and the (compiled)
    interval step. ``start(init_state, lr, fused)`` begins a trial: every slot gets ``init_state``, the
    optimiser is new (fresh Adam state). On the fast path engines are cached per process, so their compiled
    graphs (and CUDA graphs) are reused by every later trial of the same shape."""

    def __init__(self, template, n: int, bf16: bool, compile_step: bool):
        self.stack = StudentStack(template, n, batched=n > 1)
        self.step_fn = SFDStep(self.stack, bf16)
        self.step = compiled(self.step_fn) if compile_step else self.step_fn
        self.opt = None
        self.busy = False

    def start(self, init_state: dict, lr: float, fused: bool) -> None:
        self.stack.load(init_state)
        self.opt = adam(list(self.stack.flat), lr, fused=fused)

    @torch.no_grad()
    def reset_slot(self, slot: int, init_state: dict) -> None:
        """Put slot ``slot`` back to ``init_state`` with zero optimiser moments (a stopped student stays finite)."""
        self.stack.load(init_state, slots=[slot])
        for p in self.stack.flat:
            for value in self.opt.state.get(p, {}).values():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == self.stack.n:
                    value[slot].zero_()


_ENGINES: dict[tuple, SFDEngine] = {}


def _engine(teacher: Teacher, n: int, head: int, batch: int, fast: bool, bf16: bool) -> SFDEngine:
    if not fast:
        return SFDEngine(make_student(teacher.denoiser, head), n, bf16, compile_step=False)
    d = teacher.denoiser
    key = (d.net.config, d.channels, d.sigma_data, n, head, batch, str(teacher.device), compile_mode(),
           force_layout_opt())
    if key not in _ENGINES:
        _ENGINES[key] = SFDEngine(make_student(d, head), n, bf16=True, compile_step=True)
    return _ENGINES[key]


def _student_tables(configs, banks, head: int, grid: torch.Tensor, device):
    """Per interval: each student's branch targets (bank columns or grid indices) and jump sigmas padded to
    ``head`` branches; the weights (0 for unused branches) and each student's endpoint branch."""
    ref = configs[0]
    cols, taus = {}, {}
    for i in ref.trained_intervals():
        c_rows, t_rows = [], []
        for cfg, bank in zip(configs, banks):
            idx = cfg.branch_indices(i)
            idx = idx + [idx[-1]] * (head - len(idx))
            c_rows.append(bank.columns(idx) if bank is not None else idx)
            t_rows.append(grid[idx])
        cols[i] = torch.tensor(c_rows, device=device)
        taus[i] = torch.stack(t_rows).to(device)
    w = torch.zeros(len(configs), head)
    for n, cfg in enumerate(configs):
        w[n, :cfg.branches] = cfg.weights.weights(cfg.branches)
    end = torch.tensor([cfg.branches - 1 for cfg in configs], device=device)
    return cols, taus, w.to(device), end


def batch_key(config: SFDConfig) -> SFDConfig:
    """What students must share to train together: everything but K, the branch weights and the seed."""
    return replace(config, branches=1, weights=BranchWeights(), seed=0)


def train_sfd_many(teacher: Teacher, configs, banks=None, callbacks=None, progress: bool = False,
                   head: int | None = None) -> list[DistillResult | BaseException]:
    """Train one SFD + B-DENSE student per config, all at once as one batched model (see the module text).

    The configs must share :meth:`SFD.batch_key`, and their banks (one per config, or None for fresh paths)
    must all be banks or all None, with the same points. Returns, per config, its :class:`DistillResult`
    (history exactly as a student trained alone would record it) or the exception that stopped it: its
    callback raised (e.g. a pruner), its loss diverged (DivergenceError), or its bank does not fit it
    (ValueError). The others go on; KeyboardInterrupt propagates. ``head`` overrides the head's branch
    groups (default: S on the fast path, the largest K otherwise).
    """
    configs, banks, callbacks = per_config(configs, banks, callbacks)
    ref = configs[0]
    if len({batch_key(c) for c in configs}) > 1:
        raise ValueError("train_sfd_many: these configs differ in more than K, weights and seed; group them by "
                         "SFD.batch_key")
    if len({None if b is None else b.points for b in banks}) > 1:
        raise ValueError("train_sfd_many: the students' banks must all be banks with the same points, or all None")
    device = teacher.device
    fast = use_fast(device, ref.fast)
    results: list = [None] * len(configs)
    for n, (cfg, bank) in enumerate(zip(configs, banks)):
        if bank is not None:
            try:
                bank.check(cfg)
            except ValueError as e:
                results[n] = e
    live = [n for n in range(len(configs)) if results[n] is None]
    if live:
        out = without_cudagraphs(lambda hooks: _train_group(teacher, [configs[n] for n in live],
                                                            [banks[n] for n in live], hooks, progress, fast, head),
                                 [callbacks[n] for n in live])
        for n, r in zip(live, out):
            results[n] = r
    return results


def _train_group(teacher, configs, banks, callbacks, progress, fast, head):
    ref = configs[0]
    device = teacher.device
    n_students = len(configs)
    head = head or (ref.teacher_substeps if fast else max(c.branches for c in configs))
    if head < max(c.branches for c in configs):
        raise ValueError(f"a head of {head} branches cannot hold K = {max(c.branches for c in configs)}")
    grid = ref.teacher_grid()
    vals, grid_dev = grid_values(grid, device)
    s = ref.teacher_substeps
    shape, batch = teacher.image_shape, ref.batch_size

    streams: dict[tuple, PathStream] = {}
    stream_of = []
    for cfg, bank in zip(configs, banks):
        key = (cfg.seed, id(bank))
        if key not in streams:
            streams[key] = PathStream(cfg.seed, bank, device)
        stream_of.append(list(streams).index(key))
    stream_list = list(streams.values())
    placed, where = banks_for_device(configs, banks, device)
    if any(p is not b for p, b in zip(placed, banks)):
        moved = {id(b): p for b, p in zip(banks, placed)}
        for st in stream_list:
            st.serve_from(moved[id(st.bank)])
        banks = placed
    if banks[0] is not None and device.type == "cuda":
        pace_log.info("SFD, %d student%s at NFE %d: paths from %s", n_students, "s" if n_students > 1 else "",
                      ref.nfe, where)
    u_of_n = torch.tensor(stream_of, device=device)
    cols, taus, weights, end = _student_tables(configs, banks, head, grid, device)
    draw = PathDraws(stream_list, teacher, ref, batch, fast)
    active_w = weights.clone()  # a stopped student's row becomes 0: no loss, no gradient

    engine = _engine(teacher, n_students, head, batch, fast, bf16=fast or ref.amp)
    if engine.busy:
        raise RuntimeError("this process is already training students of this shape; train one group at a time")
    engine.busy = True
    try:
        init = make_student(teacher.denoiser, head).state_dict()
        engine.start(init, ref.lr, fused=fast)
        log_every = log_interval(ref.log_every, fast)
        n_trained = len(ref.trained_intervals())
        log = torch.zeros(log_every, n_students, head + 2, device=device)
        histories = [[] for _ in configs]
        active = [True] * n_students
        bar = None
        if progress:
            from tqdm.auto import tqdm

            what = f"K={ref.branches}" if n_students == 1 else f"{n_students} students"
            bar = tqdm(total=ref.iterations, desc=f"SFD {what}", leave=False, dynamic_ncols=True)

        def stop(n: int, why: BaseException) -> None:
            active[n] = False
            results[n] = why
            active_w[n].zero_()
            engine.reset_slot(n, init)

        def read(first: int, rows: int, buffer: torch.Tensor):
            """Start copying a finished block of records to the host (no wait on the GPU)."""
            if device.type != "cuda":
                return first, rows, buffer[:rows].clone(), None
            host = torch.empty(buffer[:rows].shape, dtype=buffer.dtype, pin_memory=True)
            host.copy_(buffer[:rows], non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return first, rows, host, done

        def flush(block) -> None:
            """Check a block of records and deliver them (waits for the block's copy only)."""
            first, rows, host, done = block
            t0 = time.perf_counter()
            if done is not None:
                done.synchronize()
            t1 = time.perf_counter()
            pace.waiting(t1 - t0)
            data = host / n_trained
            for j in range(rows):
                step = first + j + 1
                for n, cfg in enumerate(configs):
                    if not active[n]:
                        continue
                    row = data[j, n].tolist()
                    if not all(map(math.isfinite, row[:cfg.branches + 1] + row[-1:])):
                        bad = row[0] if not math.isfinite(row[0]) else float("nan")
                        stop(n, diverged(bad, step))
                        continue
                    rec = {"step": float(step), "loss": row[0]}
                    rec.update({f"loss_branch_{k + 1}": row[1 + k] for k in range(cfg.branches)})
                    rec["endpoint_l1"] = row[-1] / math.prod(shape)
                    histories[n].append(rec)
                    if callbacks[n] is not None:
                        try:
                            callbacks[n](rec)
                        except Exception as e:  # noqa: BLE001 - this student stops, the others go on
                            stop(n, e)
            pace.delivering(time.perf_counter() - t1)
            pace.done(first + rows)
            if bar is not None:
                bar.update(rows)
                live = [h[-1]["loss"] for n, h in enumerate(histories) if active[n] and h]
                if live:
                    bar.set_postfix(loss=f"{sum(live) / len(live):.3f}")

        results = [None] * n_students
        pace = Pace(f"SFD, {n_students} student{'s' if n_students > 1 else ''} at NFE {ref.nfe}", ref.iterations)
        start = time.perf_counter()
        first = 0
        # Two record buffers: while the GPU fills one block, the host delivers the block before it (callbacks,
        # pruning, tracking), so host work overlaps the queued steps. A student stopped by a callback therefore
        # trains up to one block longer (its records after the stop are dropped); the others are unaffected.
        logs, current, pending = [log, torch.zeros_like(log)], 0, None
        for it in range(ref.iterations):
            if it == int(ref.lr_drop_at * ref.iterations):
                for group in engine.opt.param_groups:
                    group["lr"] = ref.lr / 10 if it > 0 else ref.lr
            if fast:
                new_step()
            states = draw()  # [U, B, P, C, H, W]
            x = states[u_of_n, :, 0].float()
            row = logs[current][it - first]
            row.zero_()
            for i in range(ref.intervals):
                if i == 0 and ref.afs:
                    x = afs_step(x, vals[0], vals[s])
                    continue
                targets = states[u_of_n[:, None], :, cols[i]]  # [N, head, B, C, H, W]
                with no_gc():  # see fast.no_gc
                    loss, stats, x_next = engine.step(x, grid_dev[i * s], taus[i], targets, active_w, end)
                    loss.backward()
                engine.opt.step()
                engine.opt.zero_grad(set_to_none=True)
                row += stats
                x = x_next.clone()
            if it + 1 - first == log_every or it + 1 == ref.iterations:
                block = read(first, it + 1 - first, logs[current])
                current, first = 1 - current, it + 1
                if pending is not None:
                    flush(pending)
                pending = block
                if not any(active):
                    break
        if pending is not None:
            flush(pending)
        if bar is not None:
            bar.close()
        wall = time.perf_counter() - start
        for n, cfg in enumerate(configs):
            if active[n]:
                student = make_student(teacher.denoiser, cfg.branches)
                student.load_state_dict(select_branches(engine.stack.state(n), student.channels,
                                                        list(range(cfg.branches)), prefix="net."))
                student.eval().requires_grad_(False)
                results[n] = _result(student, cfg, teacher, histories[n], wall)
        return results
    finally:
        engine.busy = False
        engine.opt = None


class PathDraws:
    """Each call: one batch of teacher paths per stream, ``[U, B, P, C, H, W]`` on the teacher's device (bank rows,
    or the teacher's fresh solve).

    A bank on the GPU is indexed there (so is a host bank's GPU subset: :func:`banks_for_device`). A bank in host
    memory (above :data:`BANK_GPU_BYTES`) whose subset does not fit is gathered on the host into one of two pinned
    buffers and copied over without waiting: a copy from pageable memory would make
    the host wait for every queued step first, so the compiled steps could no longer run ahead of it (bench_core
    measured such a bank x2.99 slower than one on the GPU, session 7). A buffer is written again only after its
    copy of two draws before has finished. Rows and values are those of indexing the bank directly.
    """

    def __init__(self, streams: list[PathStream], teacher: Teacher, config: SFDConfig, batch: int, fast: bool):
        self.streams, self.teacher, self.config, self.batch, self.fast = streams, teacher, config, batch, fast
        self.device = teacher.device
        bank = streams[0].bank
        self.host = bank is not None and bank.states.device.type == "cpu"
        if self.host:
            shape = (len(streams), batch, *bank.states.shape[1:])
            pin = self.device.type == "cuda"
            self.buffers = [torch.empty(shape, dtype=bank.states.dtype, pin_memory=pin) for _ in range(2)]
            self.copied: list = [None, None]
            self.next = 0

    def __call__(self) -> torch.Tensor:
        if self.host:
            i = self.next
            self.next = 1 - i
            if self.copied[i] is not None:
                self.copied[i].synchronize()
            buffer = self.buffers[i]
            for u, st in enumerate(self.streams):
                torch.index_select(st.bank.states, 0, st.rows(self.batch), out=buffer[u])
            out = buffer.to(self.device, non_blocking=True, copy=True)
            if self.device.type == "cuda":
                self.copied[i] = torch.cuda.Event()
                self.copied[i].record()
            return out
        streams = self.streams
        if streams[0].bank is not None:
            return torch.stack([st.bank.states[st.rows(self.batch)] for st in streams]).to(self.device,
                                                                                          non_blocking=True)
        x_T = torch.cat([st.x_T(self.batch, self.teacher.image_shape, self.config.sigma_max) for st in streams])
        states = teacher_trajectories(self.teacher, x_T, self.config, fast=self.fast)
        return states.view(len(streams), self.batch, *states.shape[1:])


def _result(student, config: SFDConfig, teacher: Teacher, history, wall: float) -> DistillResult:
    return DistillResult(
        student, config, teacher, history, wall, len(history) * config.batch_size,
        sampler=lambda x: sfd_sample(student, x, config),
        solve_with=lambda denoiser, x: sfd_sample(denoiser, x, config),
    )


def distill_sfd(
    teacher: Teacher,
    config: SFDConfig,
    bank: TrajectoryBank | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> DistillResult:
    """Train a K-branch student with SFD + B-DENSE. With ``bank`` the teacher's paths come from it.

    Raises what stopped it (its callback's exception, DivergenceError, or ValueError for a bank that does not
    fit)."""
    result = train_sfd_many(teacher, [config], [bank], [callback], progress)[0]
    if isinstance(result, BaseException):
        raise result
    return result


@torch.no_grad()
def endpoint_error(student, teacher: Teacher, config: SFDConfig, n: int = 64, seed: int = 12345) -> float:
    """Mean absolute pixel error of the student's final sample against the teacher's, from the same x_T
    (eager fp32 teacher and student)."""
    g = generator(seed, teacher.device)
    x_T = torch.randn((n, *teacher.image_shape), generator=g, device=teacher.device) * config.sigma_max
    target = teacher_trajectories(teacher, x_T, config, fast=False)[:, -1]
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

    def batch_key(self, config: SFDConfig):
        """Everything but K, the branch weights and the seed: the teacher grid, NFE, batch, iterations, lr
        schedule, amp/fast and the logging interval (:func:`batch_key`)."""
        return batch_key(config)

    def train_many(self, teacher, configs, *, data=None, bank=None, callbacks=None, progress=False):
        """Configs with equal :meth:`batch_key` (and banks with the same points) train as one batched model;
        groups train one after another. ``bank``: None (fresh paths), one bank for all, or one per config (a
        bank per seed; students sharing seed and bank share their path stream)."""
        configs, banks, callbacks = per_config(configs, bank, callbacks)
        groups: dict = {}
        for n, (cfg, bk) in enumerate(zip(configs, banks)):
            groups.setdefault((self.batch_key(cfg), None if bk is None else bk.points), []).append(n)
        results: list = [None] * len(configs)
        for members in groups.values():
            out = train_sfd_many(teacher, [configs[n] for n in members], [banks[n] for n in members],
                                 [callbacks[n] for n in members], progress)
            for n, r in zip(members, out):
                results[n] = r
        return results

    def for_study(self, config: SFDConfig, k_choices: tuple[int, ...], nfe: int | None = None) -> SFDConfig:
        s = _lcm([config.teacher_substeps, *k_choices])
        return replace(config, nfe=config.nfe if nfe is None else nfe, branches=max(k_choices), teacher_substeps=s)

    def for_trial(self, config: SFDConfig, *, branches: int, weights: BranchWeights, seed: int,
                  nfe: int | None = None) -> SFDConfig:
        return replace(config, nfe=config.nfe if nfe is None else nfe, branches=branches, weights=weights, seed=seed)

    def settings(self, config: SFDConfig) -> dict:
        out = dict(teacher_substeps=config.teacher_substeps, afs=config.afs, teacher_solver=config.teacher_solver)
        if not config.teacher_bf16:  # named where it is not the default, so studies made before read as they were
            out["teacher_fp32"] = True
        return out

    def shared_paths(self, teacher, config: SFDConfig, *, size: int, seed: int, root, k_choices: tuple[int, ...],
                     wait: bool = True):
        """The bank of ``size`` paths from ``seed``'s noise (cached on disk per seed), or None when size <= 0
        (fresh paths). Pass the trial's seed for paths that vary with it; one seed for all trials makes the bank
        "shared", which the study must record. ``wait=False``: None when another process is building it."""
        if size <= 0:
            return None
        return cached_trajectory_bank(teacher, size, config, seed=seed, root=root, k_choices=tuple(k_choices),
                                      wait=wait)


register(SFD())
