"""How noisy is a preset's objective? Train one configuration with several seeds and print FID and KID of each.

    python scripts/objective_noise.py                                # cpu preset, K = 4, a = 0, b = 1, seeds 0 1 2
    python scripts/objective_noise.py --iterations 30 --fid-samples 200 --fid-reference 500 --k 4 --a 0.5

Each seed trains the student from the preset's (shipped or cached) teacher with that training seed and scores
it on ``fid-samples`` generated images drawn with sampling seed 2024 + i (the i-th seed), as a study with
``--seeds-per-trial`` does, against the statistics of ``fid-reference`` training images. The spread over seeds
is what separates two trials by chance: differences between trials smaller than about two standard deviations
are not findings. FID is biased upwards at small sample counts (its expected value falls as the count grows);
KID is unbiased, so KID's mean is comparable across counts while FID's is not. Prints one row per seed, then the
mean and sample standard deviation of each and the relative spread (s.d. / mean), and the time per seed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdense_core import BranchWeights, evaluate, get_framework, get_preset, make_evaluator  # noqa: E402
from bdense_core.data import load_images  # noqa: E402
from bdense_core.runtime import best_device  # noqa: E402
from bdense_core.teacher import get_teacher  # noqa: E402

EVAL_SEED = 2024


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--framework", default="sfd")
    p.add_argument("--k", type=int, default=4, help="branches (default: %(default)s)")
    p.add_argument("--a", type=float, default=0.0, help="branch-weight growth rate (default: %(default)s)")
    p.add_argument("--b", type=float, default=1.0, help="branch-weight intercept (default: %(default)s)")
    p.add_argument("--nfe", type=int, default=None, help="default: the preset's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--iterations", type=int, default=None, help="distillation iterations; default: the preset's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--fid-samples", type=int, default=None, help="generated images per score; default: the preset's")
    p.add_argument("--fid-reference", type=int, default=None, help="reference images; default: the preset's")
    p.add_argument("--device", default=None)
    p.add_argument("--root", default=None, help="cache folder (default $BDENSE_CACHE_DIR or ~/.cache/bdense-study)")
    args = p.parse_args(argv)
    try:
        preset = get_preset(args.preset)
        fw = get_framework(args.framework)
        base = preset.config(args.framework)
        base = replace(base, **{k: v for k, v in (("iterations", args.iterations), ("batch_size", args.batch_size))
                                if v is not None})
        n_samples = args.fid_samples or preset.fid_samples
        n_reference = args.fid_reference or preset.fid_reference
        shared = fw.for_study(base, (1, args.k), args.nfe if fw.nfe_per_trial else None)
        weights = BranchWeights(a=args.a, b=args.b) if args.k > 1 else BranchWeights()
        configs = [fw.for_trial(shared, branches=args.k, weights=weights, seed=s) for s in args.seeds]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = best_device(args.device)
    start = time.perf_counter()
    teacher = get_teacher(preset.teacher, preset.teacher_file, device, root=args.root)
    evaluator = make_evaluator(preset.data, n_reference, device, root=args.root)
    data = load_images(preset.data) if fw.needs_data else None
    print(f"preset {preset.name}, {args.framework} K={args.k} a={args.a:g} b={args.b:g}, NFE {configs[0].nfe}, "
          f"{base.iterations} iterations of batch {base.batch_size}; {n_samples} samples vs {n_reference} reference "
          f"images; device {device}; set-up {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{'seed':>6} {'FID':>9} {'KID':>9} {'train s':>8} {'score s':>8}", flush=True)
    fids, kids = [], []
    for i, cfg in enumerate(configs):
        t0 = time.perf_counter()
        result = fw.train(teacher, cfg, data=data)
        t1 = time.perf_counter()
        scores = evaluate(result, evaluator, n_samples, seed=EVAL_SEED + i, batch_size=preset.eval_batch)
        fids.append(float(scores["fid"]))
        kids.append(float(scores["kid"]))
        print(f"{cfg.seed:>6} {fids[-1]:>9.2f} {kids[-1]:>9.4f} {t1 - t0:>8.1f} {time.perf_counter() - t1:>8.1f}",
              flush=True)
    for name, values, fmt in (("FID", fids, ".2f"), ("KID", kids, ".4f")):
        mean, sd = spread(values)
        print(f"{name}: mean {mean:{fmt}}, s.d. {sd:{fmt}} ({100 * sd / abs(mean):.1f}% of the mean), "
              f"range {min(values):{fmt}}-{max(values):{fmt}} over {len(values)} seeds")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
