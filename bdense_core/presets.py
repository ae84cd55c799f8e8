"""Named presets: the teacher, the distillation budget and the FID sample counts, in one readable place.

``tiny`` is for tests (procedural 16 px images, seconds). ``cpu`` is the default on a machine without CUDA
(Fashion-MNIST, a small teacher, minutes on two cores). ``fmnist-gpu`` is the default where CUDA is present,
and ``cifar10-gpu`` needs internet for CIFAR-10's first download. Study and demo both read these.

A preset holds one distillation config per framework (``preset.config("sfd")``), keyed by the names of the
framework registry (``bdense_core/distill/registry.py``).

Every preset comes in two training lengths (:data:`LENGTHS`), chosen by name with :meth:`Preset.at_length`:
``screen`` is the preset as listed here (short trials for a search), ``full`` trains SFD students on SFD's
budget on the GPU presets (1,563 iterations of batch 128 = 200k trajectories, lr 5e-5 divided by 10 at half)
and PD with at least 1,000 updates per round; ``tiny`` and ``cpu`` get a proportionally longer but still
cheap ``full``. At full length a trajectory bank holds at least as many paths as a trial draws (each used
once), or the trials use fresh teacher paths (bank size 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .data import DataConfig
from .distill import PDConfig, SFDConfig, get_framework
from .networks import UNetConfig
from .teacher import TeacherConfig


LENGTHS = ("screen", "full")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    teacher: TeacherConfig
    distill: Mapping[str, Any]  # framework name -> that framework's config (the trial length of a screen)
    fid_samples: int  # generated images per FID
    fid_reference: int  # real images behind the reference statistics
    bank_size: int = 0  # teacher trajectories shared by a study's trials (0: fresh ones every iteration)
    k_choices: tuple[int, ...] = (1, 2, 4)
    eval_batch: int = 500
    teacher_file: str | None = None  # a shipped teacher checkpoint to use instead of training one
    length: str = "screen"  # which of LENGTHS ``distill`` and ``bank_size`` hold
    # students a worker trains at once as one batched model (Framework.train_many). 1 for every preset: on the
    # H100 (bench_core, 2026-11-26) 8 students per process gave x1.03 the students x iterations per second of 1,
    # since one fast student at batch 128 already keeps the GPU busy
    students_per_worker: int = 1
    n_trials: int = 20  # search trials of a study command without --n-trials
    full_distill: Mapping[str, Any] | None = None  # the configs at length "full" (None: the screen's)
    full_bank_size: int | None = None  # the bank size at length "full" (None: the screen's)

    @property
    def data(self) -> DataConfig:
        return self.teacher.data

    @property
    def frameworks(self) -> tuple[str, ...]:
        return tuple(self.distill)

    def config(self, framework: str):
        """This preset's config of ``framework`` (ValueError, one line, if the preset has none)."""
        try:
            return self.distill[framework]
        except KeyError:
            raise ValueError(f"preset {self.name!r} has no {framework!r} settings; it has "
                             f"{', '.join(self.distill)}") from None

    def at_length(self, name: str) -> "Preset":
        """This preset at training length ``name`` (one of :data:`LENGTHS`); it records the name in ``length``.

        ``screen`` is the listed preset. ``full`` swaps in the full-length configs and bank size; its bank
        holds at least ``iterations * batch_size`` paths for every framework that draws from one, or is 0
        (fresh paths). Apply command-line changes after choosing the length."""
        if name not in LENGTHS:
            raise ValueError(f"unknown training length {name!r}; choose one of {', '.join(LENGTHS)}")
        if name == self.length:
            return self
        if self.length != "screen":
            return get_preset(self.name).at_length(name)
        full = replace(self, distill=dict(self.full_distill or self.distill),
                       bank_size=self.bank_size if self.full_bank_size is None else self.full_bank_size,
                       length="full")
        for fw, cfg in full.distill.items():
            draws = getattr(cfg, "iterations", 0) * getattr(cfg, "batch_size", 0)
            if get_framework(fw).uses_bank and 0 < full.bank_size < draws:
                raise ValueError(f"preset {self.name!r} at full length: a bank of {full.bank_size} paths is smaller "
                                 f"than the {draws} an SFD trial draws; use at least {draws} or 0 (fresh paths)")
        return full

    def with_configs(self, change: Callable[[Any], Any]) -> "Preset":
        """This preset with ``change`` applied to the config of every framework."""
        return replace(self, distill={name: change(cfg) for name, cfg in self.distill.items()})


_FMNIST = DataConfig(name="fashion-mnist")
SFD_FULL_ITERATIONS = 1563  # SFD's 200k trajectories at batch 128
# Teachers shipped with the repository (fp16): fmnist-gpu's trained on the H100 by scripts/gpu/teacher.py, cpu's on
# the 2-core CPU machine by train_teacher (results/teachers/teacher-<preset>.json has the record of each).
TEACHERS = Path(__file__).resolve().parents[1] / "results" / "teachers"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="tiny",
            description="tests: procedural 16px shapes, a 0.2M-parameter teacher, seconds on a CPU",
            teacher=TeacherConfig(
                data=DataConfig(name="procedural", n_images=512, resolution=16),
                unet=UNetConfig(img_channels=1, resolution=16, channels=16, channel_mult=(1, 2),
                                num_res_blocks=1, attn_resolutions=()),
                steps=150, batch_size=32, lr=2e-3, warmup_steps=20, ema_decay=0.99, sampler_steps=8,
            ),
            distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=4, iterations=6, batch_size=16, lr=2e-4),
                pd=PDConfig(teacher_steps=8, rounds=2, iterations=6, batch_size=16),
            ),
            fid_samples=64, fid_reference=64, k_choices=(1, 2, 4),
            full_distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=4, iterations=24, batch_size=16, lr=2e-4),
                pd=PDConfig(teacher_steps=8, rounds=2, iterations=24, batch_size=16),
            ),
        ),
        Preset(
            name="cpu",
            description="default without CUDA: Fashion-MNIST 32px, a shipped 0.27M-parameter teacher, about a minute per trial on 2 cores",
            teacher=TeacherConfig(
                data=_FMNIST,
                unet=UNetConfig(img_channels=1, resolution=32, channels=16, channel_mult=(1, 2, 2),
                                num_res_blocks=1, attn_resolutions=()),
                steps=2000, batch_size=32, lr=2e-3, warmup_steps=50, ema_decay=0.995, sampler_steps=12,
            ),
            distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=4, iterations=40, batch_size=32, lr=2e-4),
                pd=PDConfig(teacher_steps=16, rounds=2, iterations=60, batch_size=32),
            ),
            # 250 samples: on 2 quiet cores a trial is ~31 s of Inception (8 images/s) plus ~26 s of training, so a
            # 6-trial study fits in the first ten minutes (scripts/objective_noise.py measures its spread)
            fid_samples=250, fid_reference=500, k_choices=(1, 2, 4), n_trials=6,
            teacher_file=str(TEACHERS / "teacher-cpu.pt"),
            full_distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=4, iterations=160, batch_size=32, lr=2e-4),
                pd=PDConfig(teacher_steps=16, rounds=2, iterations=240, batch_size=32),
            ),
        ),
        Preset(
            name="fmnist-gpu",
            description="default with CUDA: Fashion-MNIST 32px, a 3.7M-parameter teacher, 10k-sample FID",
            teacher=TeacherConfig(
                data=_FMNIST,
                unet=UNetConfig(img_channels=1, resolution=32, channels=48, channel_mult=(1, 2, 2),
                                num_res_blocks=2, attn_resolutions=(8,)),
                # trained data-parallel on 4 H100s (512 images a GPU): 74M images, the lr ramped down over the last quarter
                steps=36000, batch_size=2048, lr=2e-3, warmup_steps=1000, lr_rampdown=0.25, ema_decay=0.9998,
                sampler_steps=18,
            ),
            # short trials sized for a 100-trial search on one H100 (scripts/gpu/, results/fmnist-sfd-nfe2)
            distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=24, iterations=80, batch_size=128, lr=1e-4, amp=True),
                pd=PDConfig(teacher_steps=64, rounds=3, iterations=150, batch_size=128),
            ),
            fid_samples=10000, fid_reference=60000, bank_size=10000, k_choices=(1, 2, 3, 4, 6, 8),
            teacher_file=str(TEACHERS / "teacher-fmnist-gpu.pt"),
            # SFD's budget: 1,563 x 128 = 200k trajectories, each used once; PD: 1,000 updates per round
            full_distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=24, iterations=SFD_FULL_ITERATIONS, batch_size=128,
                              lr=5e-5, amp=True),
                pd=PDConfig(teacher_steps=64, rounds=3, iterations=1000, batch_size=128),
            ),
            full_bank_size=SFD_FULL_ITERATIONS * 128,
        ),
        Preset(
            name="cifar10-gpu",
            description="CIFAR-10 32px (needs internet for the first download), a 10M-parameter teacher",
            teacher=TeacherConfig(
                data=DataConfig(name="cifar10"),
                unet=UNetConfig(img_channels=3, resolution=32, channels=96, channel_mult=(1, 2, 2),
                                num_res_blocks=2, attn_resolutions=(16,)),
                steps=100000, batch_size=256, lr=1e-3, warmup_steps=1000, ema_decay=0.9999, sampler_steps=18,
            ),
            distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=24, iterations=1560, batch_size=128, lr=5e-5, amp=True),
                pd=PDConfig(teacher_steps=256, rounds=3, iterations=5000, batch_size=128),
            ),
            fid_samples=10000, fid_reference=50000, bank_size=20000, k_choices=(1, 2, 3, 4, 6, 8),
            full_distill=dict(
                sfd=SFDConfig(nfe=2, branches=4, teacher_substeps=24, iterations=SFD_FULL_ITERATIONS, batch_size=128,
                              lr=5e-5, amp=True),
                pd=PDConfig(teacher_steps=256, rounds=3, iterations=5000, batch_size=128),
            ),
            full_bank_size=SFD_FULL_ITERATIONS * 128,
        ),
    ]
}


# Teachers in training to replace a preset's shipped one (``scripts/gpu/teacher.py --candidate``). The preset keeps
# its shipped teacher until the candidate is trained, scored and shipped; then the preset takes the candidate's
# config and the entry goes. None is in training now: fmnist-gpu's last candidate (key 332275411bd5) is its shipped
# teacher since 2026-11-27 (results/teachers/teacher-fmnist-gpu.json).
CANDIDATE_TEACHERS: dict[str, TeacherConfig] = {}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def default_preset_name(cuda: bool) -> str:
    return "fmnist-gpu" if cuda else "cpu"


__all__ = ["LENGTHS", "PRESETS", "Preset", "default_preset_name", "get_preset", "replace", "field"]
