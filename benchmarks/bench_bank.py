"""Full-length banks in host memory: training from their GPU subset against drawing on the host, side by side.

    python benchmarks/bench_bank.py [--nfe 3] [--k 6] [--students 3] [--rows 200064] [--out bank.json]   # CUDA

A full-length bank past NFE 2 (SFD's 200,064 paths of the preset, S = 24, every K of a study in {1, 2, 3, 4, 6,
8}) outgrows ``BANK_GPU_BYTES`` and lives in host memory: 14.1 GiB at NFE 3. A confirmation trial trains
its seeds' students together, each seed from its own bank. This benchmark builds such banks (one per student,
random values: how fast rows are drawn does not depend on them, and the teacher takes minutes to fill one), then
trains the campaign's trial shape from them, in rounds alternating the two ways the draws can go:

- ``host``: every iteration gathers each student's 128 rows from its host bank into a pinned buffer and copies
  it over (``sfd.SUBSET_GPU_SPARE = None``);
- ``subset``: at the start the group's columns only are copied to the GPU (``sfd.banks_for_device``), and rows
  are indexed there (the default wherever that copy fits).

It prints the steady-state milliseconds an iteration of each (medians over the rounds, the same compiled engine),
their ratio, and how long the subset copy takes. A round stops after ``--seconds`` of training, so a slow host
path costs minutes, not hours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bdense_core.distill import needed_points  # noqa: E402
from bdense_core.distill import sfd  # noqa: E402
from bdense_core.runtime import cpu_threads, usable_cores  # noqa: E402
from bench_core import load_bench_teacher  # noqa: E402

STUDY_K = (1, 2, 3, 4, 6, 8)  # the campaign's branch counts: a study's bank holds every one's targets


class Enough(Exception):
    """A round's time is up (raised by a student's callback: it stops, the loop ends when all have)."""


def host_bank(rows: int, cfg, points, shape, device) -> sfd.TrajectoryBank:
    """A pinned host bank of ``rows`` random paths at ``points`` (filled on the GPU, copied over in chunks)."""
    states = torch.empty((rows, len(points), *shape), dtype=torch.float16, pin_memory=True)
    step = 8192
    for r in range(0, rows, step):
        part = torch.randn((min(step, rows - r), len(points), *shape), device=device, dtype=torch.float16)
        states[r:r + step].copy_(part)
    return sfd.TrajectoryBank(states, cfg.teacher_grid(), tuple(points))


def train(teacher, configs, banks, seconds: float) -> dict:
    """Train ``configs`` from ``banks`` until done or ``seconds`` after the first records; the steady ms an
    iteration from the first block of records to the last (records come in blocks of ``log_every``)."""
    stamps: dict[int, float] = {}

    def stamp(rec, first: bool):
        now = time.perf_counter()
        if first:
            stamps[int(rec["step"])] = now
        if stamps and now - min(stamps.values()) > seconds:
            raise Enough  # every student's callback: the loop ends when all have stopped

    callbacks = [lambda rec, f=(n == 0): stamp(rec, f) for n in range(len(configs))]
    t0 = time.perf_counter()
    out = sfd.train_sfd_many(teacher, configs, banks, callbacks)
    wall = time.perf_counter() - t0
    if not isinstance(out[0], (Enough, sfd.DistillResult)):
        raise out[0]
    every = configs[0].log_every
    ends = [s for s in stamps if s % every == 0]
    a, b = min(ends), max(ends)
    if b <= a:
        raise SystemExit("bench_bank: a round delivered fewer than two blocks of records; raise --seconds")
    return dict(ms=1000 * (stamps[b] - stamps[a]) / (b - a), iterations=max(stamps), wall_s=wall)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--nfe", type=int, default=3)
    p.add_argument("--k", type=int, default=6, help="the students' branch count (default 6: the campaign's best)")
    p.add_argument("--students", type=int, default=3, help="students trained together, each its own seed and bank")
    p.add_argument("--rows", type=int, default=200_064, help="paths a bank holds (SFD's full budget: 200,064)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (host, subset)")
    p.add_argument("--seconds", type=float, default=60.0, help="training time per round and way")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:  # "cuda": the current device, named by its index below
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if device.type != "cuda" or not torch.cuda.is_available():
        print("bench_bank: needs a CUDA device (a host bank is only drawn on the host when training on a GPU)")
        return 2
    torch.cuda.set_device(device)
    threads = cpu_threads()
    teacher, preset = load_bench_teacher(args.preset, device)
    cfg = replace(preset.config("sfd"), nfe=args.nfe, branches=args.k, fast=True, log_every=20, iterations=10**6)
    points = needed_points(cfg, STUDY_K)
    t0 = time.perf_counter()
    banks = [host_bank(args.rows, cfg, points, teacher.image_shape, device) for _ in range(args.students)]
    fill_s = time.perf_counter() - t0
    gib = banks[0].states.numel() * 2 / 2**30
    configs = [replace(cfg, seed=i) for i in range(args.students)]
    group = sfd.group_points(configs)
    print(f"{args.students} host bank(s) of {args.rows:,} paths x {len(points)} points (NFE {args.nfe}, "
          f"S = {cfg.teacher_substeps}): {gib:.1f} GiB each, pinned, filled in {fill_s:.0f} s; K = {args.k} "
          f"trains on {len(group)} of the points", flush=True)

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    placed, where = sfd.banks_for_device(configs, banks, device)
    torch.cuda.synchronize()
    copy_s = time.perf_counter() - t0
    del placed
    torch.cuda.empty_cache()
    print(f"the group's banks: {where}, made in {copy_s:.1f} s", flush=True)

    spare = sfd.SUBSET_GPU_SPARE
    t0 = time.perf_counter()
    train(teacher, [replace(c, iterations=60) for c in configs], banks, 1e9)  # compiles (subset way)
    compile_s = time.perf_counter() - t0
    print(f"compiled and trained 60 iterations in {compile_s:.0f} s", flush=True)
    rounds: dict[str, list] = {"host": [], "subset": []}
    for r in range(args.rounds):
        for way in ("host", "subset"):
            sfd.SUBSET_GPU_SPARE = None if way == "host" else spare
            res = train(teacher, configs, banks, args.seconds)
            rounds[way].append(res)
            print(f"round {r + 1}, {way}: {res['ms']:.1f} ms an iteration ({res['iterations']} iterations, "
                  f"{res['wall_s']:.0f} s with set-up)", flush=True)
    sfd.SUBSET_GPU_SPARE = spare
    host, subset = (statistics.median(x["ms"] for x in rounds[w]) for w in ("host", "subset"))
    gpu = torch.cuda.get_device_name(device)
    print(f"\n{gpu}, {usable_cores()} cores ({threads} torch threads), {os.cpu_count()} CPUs; NFE {args.nfe}, "
          f"K = {args.k}, {args.students} students, batch {cfg.batch_size}:")
    print(f"  ms an iteration, host draws / GPU subset: {host:.1f} / {subset:.1f} = x{host / subset:.2f}; "
          f"subset copy {copy_s:.1f} s ({where})")
    if args.out:
        args.out.write_text(json.dumps(dict(gpu=gpu, nfe=args.nfe, k=args.k, students=args.students, rows=args.rows,
                                            bank_gib=gib, group_points=len(group), bank_points=len(points),
                                            fill_s=fill_s, subset_copy_s=copy_s, where=where, compile_s=compile_s,
                                            rounds=rounds, host_ms=host, subset_ms=subset), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
