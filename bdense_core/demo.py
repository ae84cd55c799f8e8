"""The core's end-to-end job: train (or load) a teacher, distil a K-branch student and the K = 1 baseline at
one NFE, and print both FIDs. ``python -m bdense_core.demo [--preset cpu] [--k 4] [--nfe 2]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from .data import DatasetError, load_images
from .distill import FRAMEWORKS, get_framework
from .evaluate import evaluate, make_evaluator
from .fid import InceptionNotFound
from .presets import PRESETS, default_preset_name, get_preset
from .runtime import best_device
from .schedule import BranchWeights
from .teacher import get_teacher


def run(preset_name: str, k: int, nfe: int, a: float, b: float, seed: int, device: str | None, root: str | None,
        framework: str = "sfd") -> list[dict]:
    preset = get_preset(preset_name)
    dev = best_device(device)
    fw = get_framework(framework)
    # built first, so that bad input fails before any training
    shared = fw.for_study(preset.config(framework), (1, k), nfe if fw.nfe_per_trial else None)
    configs = [fw.for_trial(shared, branches=branches, seed=seed,
                            weights=BranchWeights(a=a, b=b) if branches > 1 else BranchWeights())
               for branches in ((k, 1) if k != 1 else (1,))]
    t0 = time.perf_counter()
    teacher = get_teacher(preset.teacher, preset.teacher_file, dev, root=root, progress=sys.stderr.isatty())
    print(f"teacher {teacher.key}: {'loaded' if teacher.from_cache else f'trained in {teacher.wall_time_s:.0f} s'}",
          flush=True)
    evaluator = make_evaluator(preset.data, preset.fid_reference, dev, root=root)
    rows = []
    t_scores = evaluate(teacher, evaluator, preset.fid_samples, seed=seed, batch_size=preset.eval_batch)
    rows.append(dict(model=f"teacher ({teacher.config.sampler}, {teacher.config.sampler_steps} steps)", **t_scores))
    data = load_images(preset.data) if fw.needs_data else None
    for cfg in configs:
        result = fw.train(teacher, cfg, data=data, progress=sys.stderr.isatty())
        scores = evaluate(result, evaluator, preset.fid_samples, seed=seed, batch_size=preset.eval_batch)
        label = f"B-DENSE K={cfg.branches} (a={a:g}, b={b:g})" if cfg.branches > 1 else "baseline K=1"
        rows.append(dict(model=f"{label}, NFE {cfg.nfe}", train_s=result.wall_time_s, **scores))
        print(f"{rows[-1]['model']}: FID {scores['fid']:.2f} (trained {result.wall_time_s:.0f} s)", flush=True)
    print(f"\n{preset.name} preset, {preset.fid_samples} samples vs {preset.fid_reference} reference images, "
          f"device {dev}, total {time.perf_counter() - t0:.0f} s")
    print(f"{'model':<45} {'FID':>8} {'KID':>9}")
    for r in rows:
        print(f"{r['model']:<45} {r['fid']:>8.2f} {r['kid']:>9.4f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: cpu, or fmnist-gpu with CUDA")
    p.add_argument("--framework", default="sfd", choices=tuple(FRAMEWORKS))
    p.add_argument("--k", type=int, default=4, help="branches of the B-DENSE student")
    p.add_argument("--nfe", type=int, default=2, help="student network evaluations (SFD)")
    p.add_argument("--a", type=float, default=0.0, help="branch-weight growth rate")
    p.add_argument("--b", type=float, default=1.0, help="branch-weight intercept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the best available)")
    p.add_argument("--root", default=None, help="cache folder (default $BDENSE_CACHE_DIR or ~/.cache/bdense-study)")
    args = p.parse_args(argv)
    try:
        preset = args.preset or default_preset_name(best_device(args.device).type == "cuda")
        run(preset, args.k, args.nfe, args.a, args.b, args.seed, args.device, args.root, args.framework)
    except (ValueError, DatasetError, InceptionNotFound, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
