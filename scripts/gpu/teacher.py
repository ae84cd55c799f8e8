"""Train (or resume) a preset's teacher within a time budget, then score it and write it out; or score a teacher file.

    source scripts/gpu/stage.sh
    python scripts/gpu/teacher.py --preset fmnist-gpu --candidate --budget-s 480 --out "$OUT"
    python scripts/gpu/teacher.py --preset fmnist-gpu --score results/teachers/teacher-fmnist-gpu.pt --steps 32 48 --out "$OUT"

On several GPUs, start it with torchrun, one process a GPU (data-parallel; the preset's batch is the global
batch, split evenly; rank 0 writes the checkpoint and the teacher and scores it alone):

    torchrun --standalone --nproc_per_node 4 scripts/gpu/teacher.py --preset fmnist-gpu --candidate --budget-s 1200 --out "$OUT"

Call it again to resume where the budget stopped it (the checkpoint sits in $BDENSE_CACHE_DIR). When the
teacher is complete it is saved in fp16 to OUT/teacher-<preset>.pt and scored: FID/KID of
``preset.fid_samples`` samples from its own sampler against ``preset.fid_reference`` training images,
written with the timings to OUT/teacher-<preset>.json (``--score FILE``: OUT/score-<key>.json, no training).
It is scored with the fast (compiled bf16) sampler at two sampling seeds (their difference is the sampling noise
of the score), the compiled fp32 sampler and the eager fp32 sampler at the first seed (what bf16 sampling costs;
fp32 means TF32 matrix products and convolutions, as this script sets torch),
and with ``--steps N ...`` at other Heun step counts in bf16 and fp32 (what the 18-step grid costs; the study's
teacher paths take S steps per student step). Without the Inception file (not staged yet) it stops after
saving; the same call later scores the cached teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bdense_core.edm import nfe  # noqa: E402
from bdense_core.evaluate import evaluate, make_evaluator  # noqa: E402
from bdense_core.fid import InceptionNotFound, find_inception  # noqa: E402
from bdense_core.presets import CANDIDATE_TEACHERS, get_preset  # noqa: E402
from bdense_core.runtime import best_device  # noqa: E402
from bdense_core.data import to_uint8  # noqa: E402
from bdense_core.teacher import TeacherFileError, TrainingPaused, load_teacher, save_teacher, train_teacher  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--budget-s", type=float, default=480.0, help="stop and checkpoint after this long")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--candidate", action="store_true",
                   help="train the preset's candidate teacher (presets.CANDIDATE_TEACHERS), not its shipped one's config")
    p.add_argument("--score", metavar="FILE", help="score this teacher file (trained on the preset's data); no training")
    p.add_argument("--steps", type=int, nargs="*", default=[], metavar="N",
                   help="also score the Heun sampler at these step counts, bf16 and fp32")
    args = p.parse_args(argv)
    if args.score and args.candidate:
        p.error("--score scores a given file; --candidate trains one: give one of them")
    if any(n < 2 for n in args.steps):
        p.error("--steps: Heun needs at least 2 steps")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        preset = get_preset(args.preset)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    if args.candidate:
        if preset.name not in CANDIDATE_TEACHERS:
            p.error(f"preset {preset.name} has no candidate teacher (presets.CANDIDATE_TEACHERS)")
        preset = replace(preset, teacher=CANDIDATE_TEACHERS[preset.name])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: one process a GPU
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl", device_id=torch.device("cuda", local))
        device = torch.device("cuda", local)
    else:
        device = best_device(args.device)
    rank = torch.distributed.get_rank() if world > 1 else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.score:
        try:
            teacher = load_teacher(args.score, device)
        except (FileNotFoundError, TeacherFileError) as e:
            p.exit(2, f"error: {e}\n")
        if teacher.config.data != preset.teacher.data:
            p.exit(2, f"error: {args.score} was trained on other data than preset {preset.name}'s; pick its preset\n")
        return score(teacher, preset, device, out / f"score-{teacher.key}.json", args.steps, path=None, gpus=None)
    t0 = time.perf_counter()
    last = [None, None]  # time and step of the last report (the first: where this call's training began)

    def report(step: int, loss: float) -> None:
        if rank != 0:
            return
        now = time.perf_counter()
        if last[1] is None:
            last[:] = [now, step - 1]
        if step % 1000 == 0:
            rate = (step - last[1]) / max(now - last[0], 1e-9)
            print(f"teacher step {step}/{preset.teacher.steps}: loss {loss:.4f}, {rate:.1f} steps/s "
                  f"({rate * preset.teacher.batch_size:,.0f} images/s) since step {last[1]}", flush=True)
            last[:] = [now, step]

    try:
        teacher = train_teacher(preset.teacher, device, time_budget_s=args.budget_s, callback=report)
    except TrainingPaused as e:
        rate = e.step * preset.teacher.batch_size / (time.perf_counter() - t0)
        if rank == 0:
            print(f"teacher: {e} (about {rate:,.0f} images/s incl. start-up)")
        return 0
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    print(f"teacher {teacher.key}: {'cached' if teacher.from_cache else 'trained'}, "
          f"{len(teacher.loss_history)} steps in {teacher.wall_time_s:.0f} s of training "
          f"({len(teacher.loss_history) * preset.teacher.batch_size / max(teacher.wall_time_s, 1e-9):,.0f} images/s), "
          f"final loss {sum(teacher.loss_history[-100:]) / 100:.4f}")
    path = save_teacher(teacher, out / f"teacher-{preset.name}.pt", half=True)
    # the processes that trained it, when this call trained it (a cached teacher's are not known here)
    return score(teacher, preset, device, out / f"teacher-{preset.name}.json", args.steps, path,
                 gpus=None if teacher.from_cache else world)


def score(teacher, preset, device, record_file: Path, steps: list[int], path: Path | None,
          gpus: int | None) -> int:
    """FID/KID of ``teacher`` on every sampler the module's docstring lists; the record goes to ``record_file``."""
    try:
        find_inception(allow_download=False)
    except InceptionNotFound:
        print(f"teacher {'saved to ' + str(path) if path else teacher.key}; no Inception file here yet (stage it), "
              "so it is not scored: run again")
        return 0
    t1 = time.perf_counter()
    evaluator = make_evaluator(preset.data, preset.fid_reference, device)
    t_ref = time.perf_counter() - t1
    scores = evaluate(teacher, evaluator, preset.fid_samples, seed=2024, batch_size=preset.eval_batch)
    again = evaluate(teacher, evaluator, preset.fid_samples, seed=2025, batch_size=preset.eval_batch)
    eager = evaluate(teacher, evaluator, preset.fid_samples, seed=2024, batch_size=preset.eval_batch, fast=False)

    def fid_at(n_steps: int, bf16: bool) -> dict:
        start = time.perf_counter()
        images = teacher.sample(preset.fid_samples, seed=2024, steps=n_steps, bf16=bf16)
        if images.is_cuda:
            torch.cuda.synchronize()
        s = evaluator(to_uint8(images))
        return dict(fid=s["fid"], kid=s["kid"], samples_per_s=preset.fid_samples / (time.perf_counter() - start))

    c = teacher.config
    fp32 = fid_at(c.sampler_steps, bf16=False)
    by_steps = [dict(steps=n, nfe=nfe(c.sampler, n), bf16=fid_at(n, True), fp32=fid_at(n, False)) for n in steps]
    record = dict(
        preset=preset.name, key=teacher.key, steps=c.steps, batch_size=c.batch_size,
        **({"gpus": gpus} if gpus is not None else {}),
        lr=c.lr, warmup_steps=c.warmup_steps, lr_rampdown=c.lr_rampdown, ema_decay=c.ema_decay,
        params=sum(p.numel() for p in teacher.denoiser.parameters()), train_s=teacher.wall_time_s,
        sampler=c.sampler, sampler_steps=c.sampler_steps, nfe=nfe(c.sampler, c.sampler_steps),
        fid=scores["fid"], kid=scores["kid"], fid_samples=preset.fid_samples, fid_reference=preset.fid_reference,
        fid_seed_2025=again["fid"], kid_seed_2025=again["kid"], fid_fast_fp32=fp32["fid"], kid_fast_fp32=fp32["kid"],
        fid_eager_fp32=eager["fid"], kid_eager_fp32=eager["kid"],
        eager_samples_per_s=eager["samples_per_s"], fast_fp32_samples_per_s=fp32["samples_per_s"],
        reference_stats_s=t_ref, samples_per_s=scores["samples_per_s"], by_steps=by_steps,
        **({"file": path.name, "file_mb": path.stat().st_size / 2**20} if path else {}),
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        loss_first_100=sum(teacher.loss_history[:100]) / 100, loss_last_100=sum(teacher.loss_history[-100:]) / 100,
    )
    record_file.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
