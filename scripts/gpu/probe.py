"""Throughput probe for sizing a GPU study: teacher evaluations, the trajectory bank, SFD steps, worker scaling.

    source scripts/gpu/stage.sh
    python scripts/gpu/probe.py --out "$OUT" [--workers 1 4 8] [-- <study/run.py options that fix the grid>]

Needs only torch and the repository (it runs before optuna and mlflow are staged). It builds, and leaves in
the cache, the study's NFE-2 trajectory bank exactly as ``study/run.py`` would (same preset, K choices and
seed), so the study that follows loads it instead of solving the teacher again. Prints one table and writes
it to OUT/probe.json. Every figure is measured in this one run on this machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bdense_core.distill import distill  # noqa: E402
from bdense_core.runtime import autocast, best_device  # noqa: E402
from bdense_core.schedule import BranchWeights  # noqa: E402
from bdense_core.teacher import get_teacher  # noqa: E402
from study.cli import parse_config  # noqa: E402
from study.run import make_bank_provider  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(study_argv, k, iterations, start_evt, ready_q, out_q):
    torch.backends.cudnn.benchmark = True
    cfg = parse_config(study_argv)
    device = best_device(cfg.device)
    teacher = get_teacher(cfg.preset.teacher, teacher_file=cfg.preset.teacher_file, device=device, root=cfg.cache_root)
    bank = make_bank_provider(cfg, teacher, announce=False)(cfg.nfe)
    dcfg = cfg.distill_config(k, BranchWeights(a=0.0, b=1.0), seed=0)
    distill(teacher, replace(dcfg, iterations=5), bank=bank)  # warm-up (cudnn autotune, allocator)
    _sync(device)
    ready_q.put(1)
    start_evt.wait()
    _sync(device)
    t0 = time.perf_counter()
    distill(teacher, replace(dcfg, iterations=iterations), bank=bank)
    _sync(device)
    out_q.put(time.perf_counter() - t0)


def worker_scaling(study_argv, k, iterations, n):
    ctx = mp.get_context("spawn")
    start_evt, ready, q = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(study_argv, k, iterations, start_evt, ready, q)) for _ in range(n)]
    for p in procs:
        p.start()
    for _ in procs:  # every worker has loaded the teacher and the bank and warmed up
        ready.get(timeout=300)
    t0 = time.perf_counter()
    start_evt.set()
    times = [q.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return dict(workers=n, iterations_each=iterations, wall_s=wall, slowest_s=max(times),
                aggregate_it_per_s=n * iterations / wall, per_worker_ms_per_it=1000 * sum(times) / n / iterations)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("study_args", nargs="*", help="study/run.py options after --")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    cfg = parse_config(args.study_args)
    device = best_device(cfg.device)
    rows = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "preset": cfg.preset.name}

    t0 = time.perf_counter()
    teacher = get_teacher(cfg.preset.teacher, teacher_file=cfg.preset.teacher_file, device=device, root=cfg.cache_root)
    rows["teacher_load_s"] = time.perf_counter() - t0

    x = torch.randn((1024, *teacher.image_shape), device=device) * 10
    sigma = torch.full((1024,), 10.0, device=device)
    with torch.no_grad():
        for amp in (False, True):
            with autocast(device, amp):
                teacher.denoiser(x, sigma)
                _sync(device)
                t = time.perf_counter()
                for _ in range(10):
                    teacher.denoiser(x, sigma)
                _sync(device)
            rows[f"teacher_eval_img_per_s_{'bf16' if amp else 'fp32'}"] = 10 * 1024 / (time.perf_counter() - t)

    t0 = time.perf_counter()
    bank = make_bank_provider(cfg, teacher, announce=True)(cfg.nfe)
    _sync(device)
    rows["bank_build_s"] = time.perf_counter() - t0
    rows["bank_size"] = len(bank)
    rows["bank_points"] = len(bank.points)
    rows["bank_gib"] = bank.states.numel() * bank.states.element_size() / 2**30

    for k in [k for k in (1, 4, 8) if k in cfg.k_choices]:
        dcfg = cfg.distill_config(k, BranchWeights(a=0.0, b=1.0), seed=0)
        distill(teacher, replace(dcfg, iterations=5), bank=bank)
        _sync(device)
        t = time.perf_counter()
        distill(teacher, replace(dcfg, iterations=args.iterations), bank=bank)
        _sync(device)
        rows[f"sfd_ms_per_it_K{k}"] = 1000 * (time.perf_counter() - t) / args.iterations
    del bank
    torch.cuda.empty_cache()
    rows["scaling"] = [worker_scaling(args.study_args, 4, args.iterations, n) for n in args.workers]
    base = rows["scaling"][0]["aggregate_it_per_s"]
    for r in rows["scaling"]:
        r["speedup_vs_first"] = r["aggregate_it_per_s"] / base
    print(json.dumps(rows, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
