"""Train, cache and load the EDM teacher.

``train_teacher(config)`` trains (or resumes) a teacher and caches it under a key derived from the config, so
a second call with the same config loads it instantly. A teacher can also be saved to and loaded from a
single file (fp16 weights are fine), which is how the presets' teachers are shipped with the project
(``results/teachers/``). ``get_teacher`` never starts a long training behind the user's back: a shipped file that
is missing, unreadable or of another config is a :class:`TeacherFileError` naming the fix, unless the caller asks
to train; only a corrupt file in the cache is silently worthless, so it is retrained with one line saying so.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .data import DataConfig, ImageSet, load_images
from .edm import SOLVERS, EDMConstants, EDMPrecond, edm_loss_draws, edm_loss_from, karras_sigmas, solve
from .fast import compiled, new_step, no_gc, sampling_engine, use_fast
from .networks import UNet, UNetConfig
from .runtime import autocast, best_device, cache_dir, generator, stable_hash, to_jsonable


@dataclass(frozen=True)
class TeacherConfig:
    data: DataConfig = field(default_factory=DataConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_rampdown: float = 0.0  # the last fraction of the steps over which the lr falls linearly towards 0
    ema_decay: float = 0.999
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    sampler: str = "heun"  # the teacher's own sampler, for its FID
    sampler_steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        for name in ("steps", "batch_size", "sampler_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"teacher {name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"teacher lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.lr_rampdown < 1.0:
            raise ValueError(f"lr_rampdown must be in [0, 1), got {self.lr_rampdown}")
        if self.sampler not in SOLVERS:
            raise ValueError(f"unknown solver {self.sampler!r}; choose one of {', '.join(SOLVERS)}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    @property
    def key(self) -> str:
        # a field added after teachers were shipped leaves their keys alone while it is at its default
        d = to_jsonable(self)
        if d["lr_rampdown"] == 0.0:
            del d["lr_rampdown"]
        return stable_hash(d)

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based): linear warm-up, constant, then the linear ramp-down."""
        lr = self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
        ramp = round(self.lr_rampdown * self.steps)
        if ramp and step >= self.steps - ramp:
            lr *= (self.steps - step) / (ramp + 1)
        return lr


class TeacherFileError(ValueError):
    """A teacher file that cannot serve: missing (where it is required), unreadable, or of another config."""


class TrainingPaused(Exception):
    """``train_teacher`` stopped at its time budget after writing a checkpoint; call it again to resume."""

    def __init__(self, step: int, total: int):
        super().__init__(f"teacher training paused at step {step}/{total}; the same call resumes it")
        self.step, self.total = step, total


@dataclass
class Teacher:
    denoiser: EDMPrecond  # EMA weights, eval mode
    config: TeacherConfig
    key: str
    loss_history: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    from_cache: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def sigmas(self, steps: int | None = None) -> torch.Tensor:
        c = self.config
        return karras_sigmas(steps or c.sampler_steps, c.sigma_min, c.sigma_max, c.rho).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, seed: int, batch_size: int | None = None, solver: str | None = None,
               steps: int | None = None, fast: bool | None = None, bf16: bool = True):
        """``n`` images in [-1, 1] from the teacher's ODE sampler (default: its config's sampler and steps).

        Image i depends on ``seed`` and i only (see :func:`sample_images`). On CUDA the fast path (compiled
        network, bf16 unless ``bf16`` is False, batches of ``fast.SAMPLE_BATCH``; ``batch_size`` is then ignored)
        runs unless ``fast`` is False; ``batch_size`` (default 500) sets the eager path's batches (always fp32).
        """
        c = self.config
        grid = karras_sigmas(steps or c.sampler_steps, c.sigma_min, c.sigma_max, c.rho)
        name = solver or c.sampler
        if use_fast(self.device, fast):
            engine = sampling_engine(self.denoiser, bf16=bf16)
            return sample_images(lambda x: solve(engine, x, grid, name), n, self.image_shape, c.sigma_max, seed,
                                 engine.batch, self.device, pad=True)
        return sample_images(lambda x: solve(self.denoiser, x, grid, name), n, self.image_shape, c.sigma_max,
                             seed, batch_size or 500, self.device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        u = self.config.unet
        return (u.img_channels, u.resolution, u.resolution)


NOISE_CHUNK = 500  # x_T is drawn this many rows at a time, whatever the compute batch


def noise_batches(n: int, shape, sigma_max: float, g: torch.Generator, batch: int, pad: bool = False,
                  first: int = 0):
    """``x_T = sigma_max * randn`` for ``n`` images in batches of ``batch`` rows.

    The noise is drawn from ``g`` in chunks of :data:`NOISE_CHUNK` rows, so row i is the same whatever ``batch``
    is (a fast path with large batches and the eager one see the same x_T). With ``pad`` the last batch is
    padded with zeros to ``batch`` rows (static shapes for compiled graphs); yields ``(x, rows_used)``.
    ``first`` (a multiple of NOISE_CHUNK) starts at that row: the chunks before it are drawn and dropped, so
    rows ``first..n-1`` are those of the whole draw (one bank solved in parts on several GPUs).
    """
    if first % NOISE_CHUNK or not 0 <= first <= n:
        raise ValueError(f"first must be a multiple of {NOISE_CHUNK} in [0, {n}], got {first}")
    pending, have = [], 0
    for start in range(0, n, NOISE_CHUNK):
        rows = min(NOISE_CHUNK, n - start)
        chunk = torch.randn((rows, *shape), generator=g, device=g.device) * sigma_max
        if start < first:
            continue
        pending.append(chunk)
        have += rows
        while have >= batch:
            joined = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield joined[:batch], batch
            rest = joined[batch:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        last = torch.cat(pending) if len(pending) > 1 else pending[0]
        if pad:
            last = torch.cat([last, last.new_zeros((batch - have, *shape))])
        yield last, have


def draw_noise(n: int, shape, sigma_max: float, seed: int, device) -> torch.Tensor:
    """All ``n`` rows of :func:`noise_batches` for ``seed`` at once (x_T of images / bank paths 0..n-1)."""
    g = generator(seed, device)
    return torch.cat([x for x, _ in noise_batches(n, shape, sigma_max, g, n)])


def sample_images(step_fn, n, shape, sigma_max, seed, batch_size, device, pad: bool = False) -> torch.Tensor:
    """Run ``step_fn`` on seeded x_T batches (:func:`noise_batches`); images in [-1, 1], fp32."""
    g = generator(seed, device)
    out = []
    for x, rows in noise_batches(n, shape, sigma_max, g, batch_size, pad):
        out.append(step_fn(x)[:rows].float().clamp(-1, 1))
    return torch.cat(out)


def build_denoiser(unet: UNetConfig, seed: int = 0) -> EDMPrecond:
    """A fresh network whose initial weights depend on ``seed`` only (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EDMPrecond(UNet(unet), unet.img_channels, EDMConstants().sigma_data)


def _check_shapes(config: TeacherConfig, data: ImageSet):
    u = config.unet
    if (data.channels, data.resolution) != (u.img_channels, u.resolution):
        raise ValueError(
            f"teacher network expects {u.img_channels}x{u.resolution}px images but the data is "
            f"{data.channels}x{data.resolution}px; set unet.img_channels/resolution to match"
        )


def teacher_cache_file(config: TeacherConfig, root: str | Path | None = None) -> Path:
    """Where :func:`train_teacher` keeps the finished teacher of ``config``."""
    return cache_dir("teachers", root) / config.key / "teacher.pt"


FAST_LOG_EVERY = 100  # fast path: teacher losses are read from the device this many steps at a time


class _TeacherLoss(torch.nn.Module):
    """The EDM loss of ``net`` given its draws; under bf16 autocast and channels_last where asked."""

    def __init__(self, net: EDMPrecond, bf16: bool = True):
        super().__init__()
        self.net, self.bf16 = net, bf16

    def forward(self, x: torch.Tensor, rnd: torch.Tensor, unit_noise: torch.Tensor) -> torch.Tensor:
        if self.bf16 and x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.bf16):
            return edm_loss_from(self.net, x, rnd, unit_noise)


def _fresh_training_state(config: TeacherConfig, device: torch.device, fast: bool):
    """The network at its seed's initial weights, its EMA copy and a new Adam (fused on the fast path)."""
    net = build_denoiser(config.unet, config.seed).to(device)
    if fast:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8, fused=fast or None)
    return net, ema, opt


def train_teacher(
    config: TeacherConfig,
    device: str | torch.device | None = None,
    root: str | Path | None = None,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    checkpoint_every: int = 500,
    data: ImageSet | None = None,
    time_budget_s: float | None = None,
    fast: bool | None = None,
    log_every: int | None = None,
) -> Teacher:
    """Train the teacher of ``config``, resuming a partial run and returning a cached one at once.

    With ``time_budget_s`` the call checkpoints and raises :class:`TrainingPaused` once that much time has
    passed, so that long trainings can be spread over several calls (or machines sharing the cache).

    On CUDA the fast path runs unless ``fast`` is False (:func:`~bdense_core.fast.use_fast`): the loss and its
    gradient compiled (bf16, channels_last), a fused Adam, and the losses read from the device every
    ``log_every`` steps (default :data:`FAST_LOG_EVERY` there, 1 on the eager path): the NaN check, the history and
    ``callback`` then run for those steps at once, in step order, before any checkpoint. The random draws, the
    order of the data and the EMA are the same either way.

    Data-parallel: called in every process of an initialised ``torch.distributed`` group (one per GPU, e.g.
    under ``torchrun``), each process draws the same global batch of ``config.batch_size`` and trains on its
    own slice; the gradients are averaged over the processes before each step, so the run is the
    single-process run at the same global batch (up to the order of floating-point sums), only faster. Rank 0
    writes the checkpoints and the cached teacher; a time budget pauses all processes at the same step.
    """
    device = best_device(str(device) if device else None)
    fast = use_fast(device, fast)
    world, rank = _data_parallel(config)
    final = teacher_cache_file(config, root)
    folder = final.parent
    if final.exists():
        try:
            teacher = load_teacher(final, device)
        except TeacherFileError as e:
            print(f"cached teacher {final} is unusable ({e}); training it again", file=sys.stderr, flush=True)
            _barrier(world)
            if rank == 0:
                final.unlink()
        else:
            if teacher.key == config.key:
                teacher.from_cache = True
                return teacher
            print(f"cached teacher {final} holds teacher {teacher.key}, not {config.key}; training it again",
                  file=sys.stderr, flush=True)
            _barrier(world)
            if rank == 0:
                final.unlink()
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(to_jsonable(config), indent=2))
    data = data if data is not None else load_images(config.data)
    _check_shapes(config, data)
    images = data.images.to(device)

    net, ema, opt = _fresh_training_state(config, device, fast)
    g = generator(config.seed, device)
    step, history, elapsed = 0, [], 0.0
    partial = folder / "checkpoint.pt"
    if partial.exists():
        try:
            state = torch.load(partial, map_location=device, weights_only=False)
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            g.set_state(state["rng"].cpu())
            step, history, elapsed = state["step"], state["history"], state["elapsed"]
        except Exception as e:  # noqa: BLE001 - a broken checkpoint only costs the steps it held
            print(f"teacher checkpoint {partial} is unreadable ({type(e).__name__}); starting from step 0",
                  file=sys.stderr, flush=True)
            _barrier(world)
            if rank == 0:
                partial.unlink()
            net, ema, opt = _fresh_training_state(config, device, fast)
            g = generator(config.seed, device)

    bar = _progress(config.steps, step, "teacher", progress)
    call_start = time.perf_counter()
    start = call_start - elapsed

    def save_checkpoint():
        if rank != 0:
            return
        state = dict(
            net=net.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), rng=g.get_state(),
            step=step, history=history, elapsed=time.perf_counter() - start,
        )
        torch.save(state, partial.with_suffix(".tmp"))
        partial.with_suffix(".tmp").replace(partial)

    net.train()
    loss_of = _TeacherLoss(net, bf16=config.amp)
    loss_of = compiled(loss_of) if fast else loss_of
    ema_params, net_params = list(ema.parameters()), list(net.parameters())
    every = log_every or (FAST_LOG_EVERY if fast else 1)
    losses = torch.zeros(every, device=device)
    pending = 0  # steps whose losses are still on the device
    share = config.batch_size // world  # this process's slice of the global batch
    mine = slice(rank * share, (rank + 1) * share)

    def deliver() -> None:
        """Read the pending losses (one sync), check them, record them, call back."""
        nonlocal pending
        if world > 1:  # the global batch's loss: the mean of the processes' slices
            torch.distributed.all_reduce(losses[:pending])
            losses[:pending] /= world
        values = losses[:pending].tolist()
        first = step - pending
        pending = 0
        for j, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(f"teacher loss became {value} at step {first + j + 1}; lower the teacher lr")
            history.append(value)
            if callback:
                callback(first + j + 1, value)
        if bar is not None and values:
            bar.update(len(values))
            bar.set_postfix(loss=f"{values[-1]:.4f}")

    while step < config.steps:
        idx = torch.randint(0, images.shape[0], (config.batch_size,), generator=g, device=device)
        x = images[idx].float() / 127.5 - 1
        for group in opt.param_groups:
            group["lr"] = config.lr_at(step)
        rnd, unit_noise = edm_loss_draws(x, g)
        if world > 1:
            x, rnd, unit_noise = x[mine], rnd[mine], unit_noise[mine]
        if fast:
            new_step()
        with no_gc():  # see fast.no_gc
            loss = loss_of(x, rnd, unit_noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if world > 1:
            _average_gradients(net_params, world)
        opt.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():  # ema = decay * ema + (1 - decay) * param, one foreach kernel per dtype
            get_ema_multi_avg_fn(decay)(ema_params, net_params, None)
        losses[pending].copy_(loss.detach())
        step += 1
        pending += 1
        if pending == every or step == config.steps:
            deliver()
        if step % checkpoint_every == 0 and step < config.steps:
            deliver()
            save_checkpoint()
        if time_budget_s is not None and step < config.steps and _out_of_time(
                time.perf_counter() - call_start > time_budget_s, world, device, every, step):
            deliver()
            save_checkpoint()
            if bar is not None:
                bar.close()
            raise TrainingPaused(step, config.steps)
    if bar is not None:
        bar.close()
    teacher = Teacher(ema, config, config.key, history, time.perf_counter() - start)
    if rank == 0:
        save_teacher(teacher, final, half=False)
        partial.unlink(missing_ok=True)
    _barrier(world)
    return teacher


def _data_parallel(config: TeacherConfig) -> tuple[int, int]:
    """(world size, rank) of the initialised ``torch.distributed`` group, else (1, 0); the batch must split evenly."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    if config.batch_size % world:
        raise ValueError(f"the teacher's batch of {config.batch_size} does not split over {world} processes; "
                         f"use a batch size divisible by {world}")
    return world, rank


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _average_gradients(params: list[torch.Tensor], world: int) -> None:
    """Every process's gradients replaced by their mean over the processes: one all-reduce of all of them
    flattened (a collective per tensor costs its latency about a hundred times a step)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(world)
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view(g.shape))


def _out_of_time(mine: bool, world: int, device: torch.device, every: int, step: int) -> bool:
    """Whether to pause now: at once alone; with several processes all at the same step, once any is out of time
    (they agree at the steps where the losses are read, so that no process waits for a step another never takes)."""
    if world == 1:
        return mine
    if step % every:
        return False
    flag = torch.tensor([float(mine)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def get_teacher(
    config: TeacherConfig,
    teacher_file: str | Path | None = None,
    device: str | torch.device | None = None,
    root: str | Path | None = None,
    progress: bool = False,
    train: bool = False,
) -> Teacher:
    """The teacher of ``config``.

    Without ``teacher_file``: trained once, then loaded from the cache (:func:`train_teacher`). With one (a
    preset's shipped teacher): that file, which must hold exactly this config. If it is missing, unreadable or
    holds another config, a complete teacher of this config already in the cache is used; otherwise this raises
    :class:`TeacherFileError` with one line naming the fix, and trains (saying so) only when ``train`` is true.
    """
    if teacher_file is None:
        return train_teacher(config, device, root=root, progress=progress)
    restore = f"restore the shipped file with `{_restore_command(teacher_file)}`"
    try:
        teacher = load_teacher(teacher_file, device)
        if teacher.key == config.key:
            teacher.from_cache = True
            return teacher
        problem = (f"{teacher_file} holds teacher {teacher.key}, but the preset's teacher config is {config.key} "
                   f"(its settings changed after the file was shipped)")
        restore = "ship a teacher of the new config"
    except FileNotFoundError:
        problem = f"shipped teacher {teacher_file} is missing"
    except TeacherFileError as e:
        problem = f"shipped teacher: {e}"
    if teacher_cache_file(config, root).exists() or train:
        if train:
            print(f"{problem}; training the teacher of this config instead (cached under "
                  f"{cache_dir('teachers', root)})", file=sys.stderr, flush=True)
        return train_teacher(config, device, root=root, progress=progress)
    raise TeacherFileError(f"{problem}; {restore}, or train this teacher yourself (--train-teacher, "
                           f"{config.steps} steps)")


def _restore_command(path: str | Path) -> str:
    """``git -C ROOT checkout -- RELPATH`` for a file inside this project, else a plain hint."""
    root = Path(__file__).resolve().parents[1]
    try:
        rel = Path(path).resolve().relative_to(root)
    except ValueError:
        return f"copy the teacher file back to {path}"
    return f"git -C {root} checkout -- {rel}"


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def save_teacher(teacher: Teacher, path: str | Path, half: bool = True) -> Path:
    """One file with the EMA weights (fp16 if ``half``), the config and the training record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in teacher.denoiser.state_dict().items()}
    payload = dict(
        format="bdense-teacher/1", config=to_jsonable(teacher.config), key=teacher.key, weights=weights,
        loss_history=teacher.loss_history, wall_time_s=teacher.wall_time_s,
    )
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def teacher_config_from_dict(d: dict) -> TeacherConfig:
    d = dict(d)
    d["data"] = DataConfig(**d["data"])
    d["unet"] = UNetConfig(**d["unet"])
    return TeacherConfig(**d)


def load_teacher(path: str | Path, device: str | torch.device | None = None) -> Teacher:
    """Load a teacher file written by :func:`save_teacher` (fp16 or fp32), in fp32 and eval mode.

    A missing file is a ``FileNotFoundError``; a file that is not a complete, finite teacher of the format (cut
    short, overwritten, another kind of checkpoint) is a :class:`TeacherFileError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher checkpoint {path} not found; train one with train_teacher()")
    device = best_device(str(device) if device else None)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise TeacherFileError(f"{path} is not a readable teacher file ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != "bdense-teacher/1":
        raise TeacherFileError(f"{path} is not a bdense-study teacher file")
    try:
        config = teacher_config_from_dict(payload["config"])
        net = build_denoiser(config.unet)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["weights"].items()})
        key = str(payload["key"])
    except Exception as e:  # noqa: BLE001 - missing entries, wrong shapes, unknown config fields
        raise TeacherFileError(f"{path} is an incomplete teacher file ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise TeacherFileError(f"{path} holds non-finite weights")
    net = net.to(device).eval().requires_grad_(False)
    return Teacher(net, config, key, payload.get("loss_history", []), payload.get("wall_time_s", 0.0))
