"""Several GPUs against one: fast SFD training throughput of one process per GPU, alone and side by side.

    python benchmarks/bench_gpus.py [--devices cuda:0,cuda:1] [--iterations 1000] [--out gpus.json]
    python benchmarks/bench_gpus.py --substeps 24 --students 3 --track     # the campaign's trial shape, tracked

Each device gets its own process (as ``study/run.py --workers N`` places workers round-robin on the devices):
it loads the preset's shipped teacher, builds a trajectory bank, compiles the fast path on a short trial, waits
until every process of its phase has compiled (so the timed windows overlap: compilation times differ by
seconds, a window by less), then times a trial of ``--iterations`` steps (K = 4, the preset's batch). First the
first device alone, then every device at the same time; the ratio is the summed throughput side by side over the
throughput alone, measured in this one run.

``--track`` logs every student's every record into one MLflow SQLite store that the phase's processes share,
through the study's own ``TrialRun`` (as a study's workers do), so the two runs, with and without it, tell
whether tracking is what slows workers that train side by side. The campaign's trials trained 2 to 3 times
slower per student with 2 or 3 workers on other GPUs of the same machine than with one (sessions 5 and 7,
``results/fmnist-campaign/``), while an earlier run of this benchmark, whose processes were not made to overlap,
gave x2.02.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _wait_for_all(barrier: Path, n: int, timeout: float = 1800.0) -> None:
    """Mark this process ready in ``barrier`` and wait until ``n`` processes are."""
    import os

    (barrier / f"ready.{os.getpid()}").touch()
    end = time.monotonic() + timeout
    while len(list(barrier.glob("ready.*"))) < n:
        if time.monotonic() > end:
            raise SystemExit("bench_gpus: the other processes never became ready")
        time.sleep(0.02)


def one(device: str, iterations: int, preset_name: str, substeps: int | None, students: int, track: str | None,
        barrier: Path, n: int) -> dict:
    """Iterations per second of ``students`` fast K = 4 students on ``device`` (steady state, after compilation)."""
    import torch

    from bdense_core.distill import build_trajectory_bank
    from bdense_core.runtime import cpu_threads
    from bench_core import load_bench_teacher, step_time

    cpu_threads()  # BDENSE_NUM_THREADS, if set: each process's share of the host
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    teacher, preset = load_bench_teacher(preset_name, dev)
    base = replace(preset.config("sfd"), branches=4, fast=True)
    if substeps:
        base = replace(base, teacher_substeps=substeps)
    bank = build_trajectory_bank(teacher, 16 * base.batch_size, replace(base, iterations=16), seed=0, k_choices=(1, 4))

    def trial(iters: int, runs=None) -> float:
        configs = [replace(base, iterations=iters, seed=i) for i in range(students)]
        loggers = [lambda rec, r=r: r.log_step(rec, int(rec["step"])) for r in runs] if runs else None
        t = step_time(teacher, configs, bank, also=loggers)
        for r in runs or ():
            r.flush()
        return t

    trial(min(60, iterations))  # compiles
    runs = None
    if track:
        from study.tracking import Tracker, TrialRun

        tracker = Tracker.open(track)
        experiment = tracker.use_experiment("bench-gpus")
        runs = [TrialRun(tracker, tracker.client.create_run(experiment, run_name=f"{device} student {i}").info.run_id)
                for i in range(students)]
    _wait_for_all(barrier, n)
    began = time.time()
    t = trial(iterations, runs)
    window = [began, time.time()]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    logged = [len(tracker.client.get_metric_history(r.run_id, "loss")) for r in runs] if runs else None
    return dict(device=device, gpu=name, batch=base.batch_size, step_ms=1000 * t, iterations_per_s=1 / t,
                students=students, student_iterations_per_s=students / t, logged_loss_steps=logged, window=window)


def side_by_side(devices: list[str], args, track: str | None) -> list[dict]:
    with tempfile.TemporaryDirectory() as barrier:
        common = ["--iterations", str(args.iterations), "--preset", args.preset, "--students", str(args.students),
                  "--barrier", barrier, "--n", str(len(devices))]
        if args.substeps:
            common += ["--substeps", str(args.substeps)]
        if track:
            common += ["--track-uri", track]
        procs = [subprocess.Popen([sys.executable, __file__, "--one", d, *common], stdout=subprocess.PIPE, text=True)
                 for d in devices]
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
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--substeps", type=int, default=4, help="teacher sub-steps S (the campaign: 24); 0: the preset's")
    p.add_argument("--students", type=int, default=1, help="students per process, batched (a confirmation trial: 3)")
    p.add_argument("--track", action="store_true",
                   help="log every record into one shared MLflow SQLite store per phase, as a study's workers do")
    p.add_argument("--out", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: time one device, print JSON
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--track-uri", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.iterations, args.preset, args.substeps, args.students, args.track_uri,
                             Path(args.barrier), args.n)), flush=True)
        return 0
    import torch

    devices = args.devices.split(",") if args.devices else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if len(devices) < 2:
        print("bench_gpus: needs at least two devices (--devices cuda:0,cuda:1)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as stores:
        uri = (lambda phase: f"sqlite:///{Path(stores) / phase / 'mlflow.db'}") if args.track else (lambda phase: None)
        alone = side_by_side(devices[:1], args, uri("alone"))[0]
        together = side_by_side(devices, args, uri("together"))
    total = sum(r["student_iterations_per_s"] for r in together)
    ratio = total / alone["student_iterations_per_s"]
    what = (f"fast SFD training (K=4, batch {alone['batch']}, S={args.substeps or 'preset'}, {args.students} student(s) "
            f"a process, {args.iterations} iterations{', every record tracked in MLflow' if args.track else ''}), "
            f"{alone['gpu']}:")
    print(what)
    print(f"  1 device alone: {alone['step_ms']:.2f} ms/step = {alone['student_iterations_per_s']:.1f} student-it/s")
    for r in together:
        print(f"  {r['device']} side by side: {r['step_ms']:.2f} ms/step = "
              f"{r['student_iterations_per_s']:.1f} student-it/s")
    print(f"  {len(devices)} devices / 1: {total:.1f} / {alone['student_iterations_per_s']:.1f} student-it/s = "
          f"x{ratio:.2f}  ({time.perf_counter() - t0:.0f} s in all)")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(what=what, alone=alone, together=together, ratio=ratio), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
