"""Several GPUs against one: fast SFD training throughput of one process per GPU, alone and side by side.

    python benchmarks/bench_gpus.py [--devices cuda:0,cuda:1] [--iterations 400] [--out gpus.json]

Each device gets its own process (as ``study/run.py --workers N`` places workers round-robin on the devices):
it loads the preset's shipped teacher, builds a trajectory bank, compiles the fast path on a short trial, then
times a trial of ``--iterations`` steps (K = 4, the preset's batch). First the first device alone, then every
device at the same time; the ratio is the summed throughput side by side over the throughput alone, measured
in this one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def one(device: str, iterations: int) -> dict:
    """Iterations per second of one fast K = 4 student on ``device`` (steady state, after compilation)."""
    import torch

    from bdense_core.distill import build_trajectory_bank
    from bench_core import load_bench_teacher, step_time

    dev = torch.device(device)
    torch.cuda.set_device(dev)
    teacher, preset = load_bench_teacher("fmnist-gpu", dev)
    base = replace(preset.config("sfd"), teacher_substeps=4, branches=4, fast=True)
    bank = build_trajectory_bank(teacher, 16 * base.batch_size, replace(base, iterations=16), seed=0, k_choices=(1, 4))
    step_time(teacher, [replace(base, iterations=60)], bank)  # compiles
    t = step_time(teacher, [replace(base, iterations=iterations)], bank)
    return dict(device=device, gpu=torch.cuda.get_device_name(dev), step_ms=1000 * t, iterations_per_s=1 / t)


def side_by_side(devices: list[str], iterations: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, __file__, "--one", d, "--iterations", str(iterations)],
                              stdout=subprocess.PIPE, text=True) for d in devices]
    out = []
    for p in procs:
        text, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"bench_gpus: the process on a device failed (exit {p.returncode})")
        out.append(json.loads(text.strip().splitlines()[-1]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default=None, help="default: every visible CUDA device")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: time one device, print JSON
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.iterations)), flush=True)
        return 0
    import torch

    devices = args.devices.split(",") if args.devices else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if len(devices) < 2:
        print("bench_gpus: needs at least two CUDA devices", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    alone = side_by_side(devices[:1], args.iterations)[0]
    together = side_by_side(devices, args.iterations)
    total = sum(r["iterations_per_s"] for r in together)
    ratio = total / alone["iterations_per_s"]
    print(f"fast SFD training (K=4, batch 128, {args.iterations} iterations), {alone['gpu']}:")
    print(f"  1 GPU alone: {alone['step_ms']:.2f} ms/step = {alone['iterations_per_s']:.1f} it/s")
    for r in together:
        print(f"  {r['device']} side by side: {r['step_ms']:.2f} ms/step = {r['iterations_per_s']:.1f} it/s")
    print(f"  {len(devices)} GPUs / 1 GPU: {total:.1f} / {alone['iterations_per_s']:.1f} it/s = x{ratio:.2f}"
          f"  ({time.perf_counter() - t0:.0f} s in all)")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(alone=alone, together=together, ratio=ratio), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
