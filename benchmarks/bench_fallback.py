"""What the fast path's fallback costs: the training step with CUDA graphs against the same step compiled without
them (compile mode ``default``), measured one after the other in one run on one device.

    python benchmarks/bench_fallback.py [--preset fmnist-gpu] [--device cuda] [--out fallback.json]
    python benchmarks/bench_fallback.py --quick        # CPU smoke run (eager both times: no ratio to read)

A process falls back to ``default`` for good when torch's CUDA-graph trees fail twice in one training
(``fast.without_cudagraphs``, pytorch/pytorch#154306; the first time it records its graphs again), and
``BDENSE_COMPILE_MODE=default`` chooses it by hand. Rows: the SFD iteration as the
campaign trains it (the preset's S, NFE 2, 3 students from a trajectory bank), and the PD update (K = 2, fp32).
Each engine is compiled once, then timed (steady state, from the first record block to the last).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_core import load_bench_teacher, machine, pd_step_time, step_time  # noqa: E402

from bdense_core.data import load_images  # noqa: E402
from bdense_core.distill import build_trajectory_bank  # noqa: E402
from bdense_core.fast import compile_mode, use_fast  # noqa: E402
from bdense_core.runtime import best_device  # noqa: E402

MODES = ("reduce-overhead", "default")


def in_mode(mode: str, fn):
    """``fn()`` with the fast path compiling in ``mode`` (engines are keyed by the mode: a new one compiles)."""
    before = os.environ.get("BDENSE_COMPILE_MODE")
    os.environ["BDENSE_COMPILE_MODE"] = mode
    try:
        assert compile_mode() == mode
        fn()  # compiles this mode's engine
        return fn()
    finally:
        if before is None:
            del os.environ["BDENSE_COMPILE_MODE"]
        else:
            os.environ["BDENSE_COMPILE_MODE"] = before


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="network and configs (default fmnist-gpu on CUDA, tiny otherwise)")
    p.add_argument("--device", default=None, help="default: the machine's best device")
    p.add_argument("--quick", action="store_true", help="a few iterations of the tiny preset (a smoke run)")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations per row (default 200, 41 quick)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    args = p.parse_args(argv)
    device = best_device(args.device)
    quick = args.quick or device.type != "cuda"
    teacher, preset = load_bench_teacher(args.preset or ("tiny" if quick else "fmnist-gpu"), device)
    iters = args.iterations or (41 if quick else 200)
    out: dict = {"machine": machine(device), "preset": preset.name, "teacher": teacher.key, "iterations": iters,
                 "fast": use_fast(device, True)}
    sfd = replace(preset.config("sfd"), nfe=2, branches=4, fast=True, iterations=iters)
    bank = build_trajectory_bank(teacher, 16 * sfd.batch_size, sfd, seed=0, k_choices=(1, 4))
    students = [replace(sfd, seed=i) for i in range(3)]
    pd = replace(preset.config("pd"), branches=2, fast=True, iterations=iters)
    data = load_images(preset.teacher.data)
    rows: dict = {mode: {} for mode in MODES}
    out["modes"] = rows
    print(f"{out['machine']}, preset {preset.name}, {iters} timed iterations a row"
          f"{'' if out['fast'] else ' (eager: the CPU has no compiled path, both columns time the same code)'}",
          flush=True)
    timings = (("sfd_iteration_s", f"SFD iteration, NFE 2, S={sfd.teacher_substeps}, 3 students, bank",
                lambda: step_time(teacher, students, bank)),
               ("pd_update_s", f"PD update, K=2, batch {pd.batch_size}, fp32", lambda: pd_step_time(teacher, pd, data)))
    for key, what, fn in timings:  # each row printed (and written) as soon as it is measured
        for mode in MODES:
            t0 = time.perf_counter()
            rows[mode][key] = in_mode(mode, fn)
            print(f"  {what}, mode {mode!r}: {1e3 * rows[mode][key]:.2f} ms "
                  f"(compiling and timing {time.perf_counter() - t0:.0f} s)", flush=True)
        a, b = rows[MODES[0]][key], rows[MODES[1]][key]
        out[f"{key}_ratio"] = b / a
        print(f"{what}: without CUDA graphs (mode 'default') / with  {1e3 * b:.2f} ms / {1e3 * a:.2f} ms = "
              f"x{b / a:.2f}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
