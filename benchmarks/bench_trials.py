"""Whole study trials per hour for several worker and device setups, measured one after another in one run.

    python benchmarks/bench_trials.py --setup 1:cuda:0 --setup 2:cuda:0,cuda:1 --trials 6 \
        -- --preset fmnist-gpu --length full                  # 2 GPUs against 1 (issue 14: goal x1.8)
    python benchmarks/bench_trials.py --setup 1:cuda:0 --setup 2:cuda:0,cuda:0 -- --preset fmnist-gpu --length full
                                                                 # two workers sharing one GPU against one

Each setup is WORKERS:DEVICES (study/run.py's --workers and --devices): a short real study of WORKERS x --trials
trials (--pruner none; distil, 10k-sample FID, tracking) in one scratch run folder. A warm-up study of one trial
with the same options runs first and fills what every setup then reads from the cache: the teacher, the
trajectory bank (every trial has seed 0: one bank), the FID reference statistics and the compiled kernels. Rate:
completed trials over the span from the first trial's start to the last one's end (process start-up and loading
reported apart); ratios are against the first setup, measured in the same run on the same machine. A worker's
first group also pays its own start-up (bank loading, compiling from the warm cache, cuDNN's autotuning), so the
steady rate is printed beside it: the trials completed after the first completion, over the time from it to the
last (trials of one group are told together). With few trials per worker the two differ; give each setup enough
groups (--trials) for the steady rate to rest on more than one. Beside each trial's wall time: its training
loops (``train_time_s``, a group's loop counted once for each trial in it), the framework's calls they ran in
(``distil_time_s``: set-up, compiling and handing the students back included) and scoring its students
(``eval_time_s``: samples, FID, the sample grid); what is left is the trial's share of recording and waiting.
``--runs-dir`` keeps the studies (and the workers' logs, with their pace lines) after the run, and
``--rates-of`` prints the same rows for studies kept that way (each journal holds the study its file is named after),
without running anything:

    python benchmarks/bench_trials.py --rates-of results/fmnist-campaign/bench-trials-session17/bench-setup-0.journal \
        --rates-of results/fmnist-campaign/bench-trials-session17/bench-setup-1.journal
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_core import study_rate, trials_per_hour  # noqa: E402

from study.storage import StorageError  # noqa: E402


def _setup(text: str) -> tuple[int, str]:
    workers, _, devices = text.partition(":")
    try:
        n = int(workers)
    except ValueError:
        n = 0
    if n < 1 or not devices:
        raise argparse.ArgumentTypeError(f"a setup is WORKERS:DEVICES, e.g. 2:cuda:0,cuda:1; got {text!r}")
    return n, devices


def students_per_worker(study_args: list[str]) -> int:
    """The ``--students-per-worker`` the study options give (1 when they give none: a preset's default is 1)."""
    for i, a in enumerate(study_args):
        if a.startswith("--students-per-worker"):
            value = a.partition("=")[2] or (study_args[i + 1] if i + 1 < len(study_args) else "")
            return int(value) if value.isdigit() and int(value) > 0 else 1
    return 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", type=_setup, action="append", default=[], metavar="WORKERS:DEVICES")
    p.add_argument("--rates-of", action="append", default=[], metavar="JOURNAL",
                   help="print the rows of studies kept by an earlier run (--runs-dir) instead of running setups")
    p.add_argument("--trials", type=int, default=4, metavar="N", help="trials per worker in each setup")
    p.add_argument("--runs-dir", default=None, help="scratch run folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    p.add_argument("--no-warm-up", action="store_true",
                   help="no warm-up study: the first setup's first group fills the caches (its steady rate leaves "
                        "that group out; its span's rate does not)")
    p.add_argument("study_args", nargs=argparse.REMAINDER, help="-- then study/run.py options shared by every setup")
    args = p.parse_args(argv)
    study_args = [a for a in args.study_args if a != "--"]
    if args.trials < 1:
        p.error("--trials must be >= 1")
    if bool(args.setup) == bool(args.rates_of):
        p.error("give --setup WORKERS:DEVICES (run setups) or --rates-of JOURNAL (rows of kept studies), not both")
    if args.rates_of:
        rows = []
        for path in map(Path, args.rates_of):
            if not path.is_file():
                p.error(f"no journal at {path}; --rates-of takes a .journal file that bench_trials kept (--runs-dir)")
            try:
                rows.append(dict(setup=path.stem, **study_rate(f"journal:{path}", path.stem)))
            except (RuntimeError, StorageError) as e:  # not a journal, no study of that name, or none completed
                p.error(f"{path}: {e}; --rates-of takes a .journal file that bench_trials kept (--runs-dir)")
            print_row(rows)
        return 0
    with tempfile.TemporaryDirectory(prefix="bdense-trials-") as tmp:
        runs = Path(args.runs_dir or tmp)
        print(f"study options: {shlex.join(study_args)}", flush=True)
        t0 = time.perf_counter()
        warm_s = None
        if not args.no_warm_up:
            # as many warm-up trials as a worker trains together, so the setups find the batched engine compiled
            warm = trials_per_hour(1, students_per_worker(study_args),
                                   study_args + ["--devices", args.setup[0][1].split(",")[0]], runs, "bench-warm-up")
            warm_s = time.perf_counter() - t0
            print(f"warm-up (teacher, bank, FID statistics, compile caches): {warm_s:.0f} s, its trial "
                  f"{warm['mean_trial_s']:.0f} s", flush=True)
        rows = []
        for i, (workers, devices) in enumerate(args.setup):  # each row printed when measured: a run cut short keeps it
            r = trials_per_hour(workers, args.trials, study_args + ["--devices", devices], runs, f"bench-setup-{i}")
            rows.append(dict(setup=f"{workers}:{devices}", **r))
            print_row(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(warm_up_s=warm_s, study_args=study_args, setups=rows), indent=2))
    return 0


def print_row(rows: list[dict]) -> None:
    """The last row, its ratios against the first."""
    r, first = rows[-1], rows[0]
    start_up = "" if math.isnan(r["wall_s"]) else f"start-up {r['wall_s'] - r['span_s']:.0f} s apart; setup {r['wall_s']:.0f} s"
    print(f"{r['setup']:<24} {r['trials']:>3} trials, {r['mean_trial_s']:6.1f} s each "
          f"(training {r['mean_train_s']:.1f} s, in the framework's calls {r['mean_distil_s']:.1f} s, "
          f"scoring {r['mean_eval_s']:.1f} s), "
          f"{r['trials_per_hour']:8,.1f} trials/h = x{r['trials_per_hour'] / first['trials_per_hour']:.2f} "
          f"({start_up or 'start-up not known: a kept study'}); after the first "
          f"completion: {r['steady_trials']} trials in {r['steady_span_s']:.0f} s = "
          f"{r['steady_trials_per_hour']:,.1f} trials/h = "
          f"x{r['steady_trials_per_hour'] / first['steady_trials_per_hour']:.2f}"
          + (f"; {r['failed']} trial(s) did not complete" + (f": {r['error']}" if r["error"] else "")
             if r["failed"] else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
