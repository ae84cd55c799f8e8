"""What rounding does to the PD loss: the branch losses of a student that starts as its teacher, per precision.

    python benchmarks/pd_precision.py [--preset fmnist-gpu] [--device cuda] [--batches 4] [--out pd.json]

A PD student starts as its teacher (widened head), so its loss at initialisation is what the first updates
learn from: branch 1's is zero up to rounding (its target is the teacher's own step) and branch 2's is the
teacher's second step's change of slope. Rounding in the network's output enters the loss times the
x-distance's weight ``max(1/t^2, 1)``. This prints both branch losses, both distances, for the shipped teacher
(first round, batches of the preset's size from the training images, one seed), under:

- ``fp32``: no autocast; on CUDA with TF32 off for convolutions and matmuls (what the CPU computes);
- ``tf32`` (CUDA only): no autocast, TF32 on for convolutions and matmuls (torch's default for convolutions);
- ``bf16 student`` / ``bf16 teacher``: that network under bf16 autocast, the other in fp32.

Each row's ratio is against the fp32 row of the same run (none where fp32's loss is exactly 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdense_core.data import load_images  # noqa: E402
from bdense_core.distill.progressive import DISTANCES, branch_losses, draw_batch, make_student  # noqa: E402
from bdense_core.presets import get_preset  # noqa: E402
from bdense_core.runtime import best_device  # noqa: E402
from bdense_core.schedule import BranchWeights  # noqa: E402
from bdense_core.teacher import load_teacher  # noqa: E402


class _Bf16(nn.Module):
    """``net`` under bf16 autocast, fp32 out; ``all_branches`` too (the student's)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def _cast(self):
        return torch.autocast(next(self.net.parameters()).device.type, dtype=torch.bfloat16)

    def forward(self, x, sigma):
        with self._cast():
            return self.net(x, sigma).float()

    def all_branches(self, x, sigma):
        with self._cast():
            return self.net.all_branches(x, sigma).float()


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 for cuDNN convolutions and CUDA matmuls on or off inside the block (restored after)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


PRECISIONS = ("fp32", "tf32", "bf16 student", "bf16 teacher")


@torch.no_grad()
def init_losses(teacher, config, images: torch.Tensor, precision: str, batches: int = 4, seed: int = 0) -> list[float]:
    """Mean per-branch PD loss ``[K]`` at initialisation (student = teacher) over ``batches`` first-round batches
    under ``precision`` (one of PRECISIONS); the batches depend on ``seed`` only."""
    d = teacher.denoiser
    device = next(d.parameters()).device
    student = make_student(d, config.branches).eval()
    s_net = _Bf16(student) if precision == "bf16 student" else student
    t_net = _Bf16(d) if precision == "bf16 teacher" else d
    cfg = replace(config, amp=False)
    n_student = config.teacher_steps // 2
    fine = config.grid(2 * n_student).to(device)
    g = torch.Generator(device).manual_seed(seed)
    total = torch.zeros(config.branches, dtype=torch.float64)
    with tf32(precision == "tf32"):
        for _ in range(batches):
            z, t, mid, s = draw_batch(images, fine, n_student, config.batch_size, g)
            total += branch_losses(s_net, t_net, z, t, mid, s, cfg).double().cpu()
    return (total / batches).tolist()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--device", default=None)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    args = p.parse_args(argv)
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        print(f"pd_precision.py: error: {e}", file=sys.stderr)
        return 2
    device = best_device(args.device)
    teacher = load_teacher(preset.teacher_file, device)
    images = load_images(preset.data).images.to(device)
    base = replace(preset.config("pd"), branches=2, weights=BranchWeights())
    precisions = [q for q in PRECISIONS if q != "tf32" or device.type == "cuda"]
    rows = []
    for distance in DISTANCES:
        cfg = replace(base, distance=distance)
        ref = None
        for q in precisions:
            losses = init_losses(teacher, cfg, images, q, args.batches)
            ref = ref or losses
            rows.append({"distance": distance, "precision": q, "branch_losses": losses,
                         "ratio_to_fp32": [a / b if b else None for a, b in zip(losses, ref)]})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"PD loss at initialisation, preset {preset.name} (teacher steps {base.teacher_steps}, batch "
          f"{base.batch_size} x {args.batches}), {name}, torch {torch.__version__}")
    print(f"{'distance':<9}{'precision':<14}{'branch 1':>12}{'branch 2':>12}{'x fp32 (1, 2)':>22}")
    for r in rows:
        l1, l2 = r["branch_losses"]
        q1, q2 = r["ratio_to_fp32"]
        q = "".join(f"{v:>11.3g}" if v is not None else f"{'0 in fp32':>11}" for v in (q1, q2))
        print(f"{r['distance']:<9}{r['precision']:<14}{l1:>12.3g}{l2:>12.3g}{q}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "preset": preset.name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
