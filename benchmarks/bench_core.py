"""Core benchmark: one run prints every ratio, measured side by side on one machine.

    python benchmarks/bench_core.py [--preset fmnist-gpu] [--device cuda] [--out results.json]

Measures, for the preset's network (random weights: timing does not depend on training):
- the B-DENSE head's parameter and FLOP overhead for each K;
- the student's SFD training iteration time for K = 1 and K = 4, both with fresh teacher paths every
  iteration (paper Algorithm 4) and from a precomputed trajectory bank (student cost alone);
- the student's sampling time at its NFE for K = 1 and K = 4;
- FID feature throughput: the project's device path (torch bicubic-antialias resize + Inception on the
  device) against clean-fid's own ``get_model_features`` path (PIL resize on the CPU) on the same images;
- with ``--trials-per-hour 1 8``: whole study trials per hour (distil + 10k-sample FID + tracking) with 1 and
  with 8 worker processes on the one device, each a short real study (``study/run.py``) in a scratch run
  folder; the rate is completed trials over the span from the first trial's start to the last one's end
  (process start-up, teacher and bank loading excluded and reported apart).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bdense_core.data import DataConfig, load_images  # noqa: E402
from bdense_core.distill import build_trajectory_bank, distill  # noqa: E402
from bdense_core.fid import InceptionFeatures, cleanfid_features  # noqa: E402
from bdense_core.networks import head_overhead  # noqa: E402
from bdense_core.presets import get_preset  # noqa: E402
from bdense_core.runtime import best_device  # noqa: E402
from bdense_core.teacher import Teacher, build_denoiser  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=3):
    """Median wall time of ``fn()`` over ``repeat`` runs after one warm-up run."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def trials_per_hour(workers: int, trials: int, study_args: list[str], runs_dir: Path) -> dict:
    """Run a short real study with ``workers`` processes and ``workers * trials`` trials; its trial rate."""
    import optuna

    name = f"bench-tph-w{workers}"
    storage = f"journal:{runs_dir / (name + '.journal')}"
    cmd = [sys.executable, str(ROOT / "study" / "run.py"), "--study-name", name, "--storage", storage,
           "--runs-dir", str(runs_dir), "--n-trials", str(workers * trials), "--workers", str(workers),
           "--pruner", "none", *study_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"study with {workers} workers failed: {proc.stderr.strip().splitlines()[-1:]}")
    from study.storage import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return dict(workers=workers, trials=len(done), span_s=span, wall_s=wall, trials_per_hour=3600 * len(done) / span,
                mean_trial_s=sum(t.duration.total_seconds() for t in done) / len(done))


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads (torch {torch.__version__})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="default: fmnist-gpu on CUDA, tiny on the CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--iterations", type=int, default=None, help="SFD iterations per timing (default 20 GPU / 3 CPU)")
    p.add_argument("--fid-images", type=int, default=None, help="images for the device FID path (default 5000 GPU / 100 CPU)")
    p.add_argument("--cleanfid-images", type=int, default=None, help="images for clean-fid's path (default 1000 GPU / 50 CPU)")
    p.add_argument("--inception", default=None, help="path to the Inception TorchScript file")
    p.add_argument("--trials-per-hour", type=int, nargs="*", default=None, metavar="N",
                   help="also run short real studies with each of these worker counts (e.g. 1 8) and report trials/hour")
    p.add_argument("--tph-trials", type=int, default=2, metavar="N", help="trials per worker in those studies")
    p.add_argument("--study-args", default="", metavar="ARGS",
                   help="extra study/run.py options for those studies, one string (e.g. '--iterations 200')")
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    args = p.parse_args(argv)
    device = best_device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    preset = get_preset(args.preset or ("fmnist-gpu" if gpu else "tiny"))
    iters = args.iterations or (20 if gpu else 3)
    rows: list[tuple[str, str]] = []
    out: dict = {"machine": machine(device), "preset": preset.name}

    teacher = Teacher(build_denoiser(preset.teacher.unet, 0).to(device).eval().requires_grad_(False),
                      preset.teacher, key="random")
    net = teacher.denoiser.net
    for k in (2, 4, 8):
        o = head_overhead(net, k)
        out[f"head_K{k}"] = dict(params_pct=o.params_pct, flops_pct=o.flops_pct, params_base=o.params_base)
        rows.append((f"head overhead K={k}: params / forward FLOPs",
                     f"+{o.params_extra:,} ({o.params_pct:.4f}%) / +{o.flops_pct:.4f}%"))

    base = replace(preset.config("sfd"), iterations=iters, teacher_substeps=4)
    step = {}
    for mode in ("fresh", "bank"):
        bank = build_trajectory_bank(teacher, 4 * base.batch_size, base, seed=0) if mode == "bank" else None
        for k in (1, 4):
            cfg = replace(base, branches=k)
            t = timed(lambda: distill(teacher, cfg, bank=bank), device, repeat=3 if gpu else 1)
            step[(mode, k)] = t / iters
            out[f"sfd_iter_s_{mode}_K{k}"] = step[(mode, k)]
        rows.append((f"SFD iteration, {'teacher paths each iteration' if mode == 'fresh' else 'trajectory bank'} "
                     f"(batch {base.batch_size}, S=4): K=1 / K=4",
                     f"{1e3 * step[(mode, 1)]:.1f} ms / {1e3 * step[(mode, 4)]:.1f} ms = "
                     f"x{step[(mode, 4)] / step[(mode, 1)]:.3f}"))

    n_sample = 10000 if gpu else 200
    sample_t = {}
    for k in (1, 4):
        res = distill(teacher, replace(base, branches=k, iterations=1))
        sample_t[k] = timed(lambda: res.sample(n_sample, seed=0, batch_size=1000), device)
        out[f"sample_s_K{k}"] = sample_t[k]
    rows.append((f"student sampling, {n_sample} images at NFE {base.nfe}: K=1 / K=4",
                 f"{sample_t[1]:.3f} s / {sample_t[4]:.3f} s = x{sample_t[4] / sample_t[1]:.3f}"))

    extractor = InceptionFeatures(args.inception, device=device)
    n_fid = args.fid_images or (5000 if gpu else 100)
    n_clean = args.cleanfid_images or (1000 if gpu else 50)
    images = load_images(DataConfig(name="fashion-mnist", n_images=max(n_fid, n_clean), seed=1)).images
    on_dev = images[:n_fid].to(device)
    t_dev = timed(lambda: extractor.features(on_dev, batch_size=500), device, repeat=2)
    t_clean = timed(lambda: cleanfid_features(images[:n_clean], extractor, batch_size=100), device, repeat=1)
    ips_dev, ips_clean = n_fid / t_dev, n_clean / t_clean
    out.update(fid_device_images_per_s=ips_dev, fid_cleanfid_images_per_s=ips_clean)
    rows.append(("FID features, images/s: device path / clean-fid's get_model_features",
                 f"{ips_dev:,.0f} / {ips_clean:,.0f} = x{ips_dev / ips_clean:.1f}"))

    if args.trials_per_hour:
        del extractor, on_dev, teacher, net
        if gpu:
            torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory(prefix="bdense-tph-") as tmp:
            tph = [trials_per_hour(n, args.tph_trials, shlex.split(args.study_args), Path(tmp))
                   for n in args.trials_per_hour]
        out["trials_per_hour"] = tph
        first = tph[0]["trials_per_hour"]
        for r in tph:
            rows.append((f"study trials per hour, {r['workers']} worker(s) ({r['trials']} trials, "
                         f"{r['mean_trial_s']:.0f} s each; start-up {r['wall_s'] - r['span_s']:.0f} s apart)",
                         f"{r['trials_per_hour']:,.0f}/h = x{r['trials_per_hour'] / first:.2f}"))

    width = max(len(r[0]) for r in rows)
    print(f"\nbdense-study core benchmark on {out['machine']}, preset {preset.name}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
