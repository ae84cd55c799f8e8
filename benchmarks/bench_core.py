"""Core benchmark: one run validates the fast path and prints every ratio, measured side by side on one machine.

    python benchmarks/bench_core.py [--preset fmnist-gpu] [--device cuda] [--out results.json]   # GPU, ~6 min
    python benchmarks/bench_core.py --quick                                                     # CPU smoke run
    python benchmarks/bench_core.py --no-check --students 1 --profile 15    # + where the training step's time goes

On CUDA it first runs benchmarks/gpu_check.py's checks (fast path against eager: training losses, host syncs,
sampling), then measures, for the preset's network (its shipped teacher where there is one, else random
weights: timing does not depend on training):
- the B-DENSE head's parameter and FLOP overhead for each K;
- the eager SFD iteration for K = 1 and K = 4, with fresh teacher paths every iteration (paper Algorithm 4)
  and from a trajectory bank (student cost alone);
- the SFD iteration from a bank (batch of the preset, S = K = 4) fast against eager (goal >= 4x), and K = 4
  against K = 1 in the fast path (goal <= 1.02; also K = 1 in the fast path's S-branch head);
- the fast SFD iteration with its bank in host memory, where a full-length bank past NFE 2 lives;
- N students per process (N = 1, 2, 4, 8, 16 by default): time per step and students x iterations per second,
  to choose a preset's students per worker;
- teacher sampling (10k images, Heun 18) and student sampling (10k at NFE 2) fast against eager (goal >= 3x),
  and the eager student sampling for K = 1 and K = 4;
- FID feature throughput: the project's device path (torch bicubic-antialias resize + Inception on the
  device, goal >= 4,000 images/s on an H100) against clean-fid's own ``get_model_features`` path;
- with ``--campaign-nfe 2 3 4``: the fast SFD iteration in the campaign's own shape (the preset's S, 1 and 3
  students from a bank on the GPU) at each NFE, per student and interval, and at the first NFE the same step
  compiled with Inductor's channels-last layout forced (``BDENSE_FORCE_LAYOUT_OPT=1``) against the default;
- with ``--profile N``: where the SFD training step's time goes (``torch.profiler`` over 60 fast iterations, K = 4):
  how much of the wall time the GPU was busy and the N costliest operators and kernels by self device time (the
  profile issue 14 asks for where a goal is missed);
- with ``--trials-per-hour 1 8``: whole study trials per hour (distil + 10k-sample FID + tracking) with 1 and
  with 8 worker processes on the one device, each a short real study (``study/run.py``) in a scratch run
  folder; the rate is completed trials over the span from the first trial's start to the last one's end
  (process start-up, teacher and bank loading excluded and reported apart).

Iteration times are steady-state: the time between the first and the last delivery of loss records (compile,
CUDA-graph recording and trial set-up fall before the first), divided by the iterations between them.
Compilation times are printed apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
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
from bdense_core.distill.common import log_interval  # noqa: E402
from bdense_core.distill.sfd import place_bank, train_sfd_many  # noqa: E402
from bdense_core.fast import use_fast  # noqa: E402
from bdense_core.fid import InceptionFeatures, cleanfid_features  # noqa: E402
from bdense_core.networks import head_overhead  # noqa: E402
from bdense_core.presets import get_preset  # noqa: E402
from bdense_core.runtime import best_device, cpu_threads  # noqa: E402
from bdense_core.teacher import Teacher, build_denoiser, load_teacher  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=3, warmup=True):
    """Median wall time of ``fn()`` over ``repeat`` runs (after one warm-up run if ``warmup``)."""
    if warmup:
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def load_bench_teacher(preset_name: str, device: torch.device):
    """The preset's shipped teacher where it has one (else random weights) on ``device``, and the preset."""
    preset = get_preset(preset_name)
    if preset.teacher_file and Path(preset.teacher_file).is_file():
        return load_teacher(preset.teacher_file, device), preset
    net = build_denoiser(preset.teacher.unet, 0).to(device).eval().requires_grad_(False)
    return Teacher(net, preset.teacher, key="random"), preset


def step_time(teacher, configs, bank, head=None, also=None) -> float:
    """Steady-state seconds per iteration of ``train_sfd_many(configs)`` (from the first to the last burst).
    ``also``: one more callback per student (or None), given each of its records as training goes."""
    stamps: dict[int, float] = {}
    also = list(also) if also is not None else [None] * len(configs)

    def stamp(rec):
        stamps[int(rec["step"])] = time.perf_counter()
        if also[0] is not None:
            also[0](rec)

    callbacks = [stamp] + also[1:]
    out = train_sfd_many(teacher, configs, [bank] * len(configs), callbacks, head=head)
    if isinstance(out[0], BaseException):
        raise out[0]
    return _steady_s(stamps, configs[0], teacher.device, "step_time needs more than {} iterations")


def profile_steps(teacher, config, bank, top: int) -> dict:
    """Where one short training run's time goes (``torch.profiler`` over ``train_sfd_many([config])``; on the
    fast path the caller has already trained this shape, so the engine is compiled and warm): the ``top``
    operators and kernels by self device time (CPU time on the CPU), and how much of the run's wall time the
    device was busy: well under 100 % means the GPU waits on launches and the host, close to it means the
    kernels themselves are the cost."""
    from torch.profiler import ProfilerActivity, profile

    device = teacher.device
    cuda = device.type == "cuda"
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step_time(teacher, [config], bank)
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()

    def self_us(e) -> float:  # microseconds; the device attribute's name moved across torch versions
        if not cuda:
            return float(e.self_cpu_time_total)
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))

    busy = sum(self_us(e) for e in events) / 1e6
    ranked = sorted(events, key=self_us, reverse=True)[:top]
    return dict(wall_s=wall, busy_s=busy, busy_share=busy / wall, iterations=config.iterations,
                kind="device" if cuda else "cpu",
                top=[dict(name=e.key, self_s=self_us(e) / 1e6, share=self_us(e) / 1e6 / busy if busy else 0.0,
                          calls=int(e.count)) for e in ranked])


def pd_step_time(teacher, config, data) -> float:
    """Steady-state seconds per update of one PD round (``distill`` with ``config``, from the first to the last
    record block)."""
    stamps: dict[int, float] = {}
    distill(teacher, replace(config, rounds=1), data=data, callback=lambda rec: stamps.setdefault(int(rec["step"]),
                                                                                                  time.perf_counter()))
    return _steady_s(stamps, config, teacher.device, "pd_step_time needs more than {} updates")


def _steady_s(stamps: dict[int, float], config, device, too_short: str) -> float:
    """Seconds per update from the first record block to the last (``stamps``: step -> when its record came)."""
    every = log_interval(config.log_every, use_fast(device, config.fast))
    first, last = min(every, config.iterations), config.iterations
    if last <= first:
        raise ValueError(too_short.format(first))
    return (stamps[last] - stamps[first]) / (last - first)


def trials_per_hour(workers: int, trials: int, study_args: list[str], runs_dir: Path, name: str | None = None) -> dict:
    """Run a short real study with ``workers`` processes and ``workers * trials`` trials; its trial rate
    (:func:`study_rate`).

    A study that ends with failed trials (its exit status not 0) still has a rate when some completed: the rate of
    those, with ``failed`` (how many did not complete) and ``error`` (the study's error line) beside it; with none
    completed it raises. Session 17's two-worker setup lost its row when three of its 18 trials failed."""
    name = name or f"bench-tph-w{workers}"
    storage = f"journal:{runs_dir / (name + '.journal')}"
    cmd = [sys.executable, str(ROOT / "study" / "run.py"), "--study-name", name, "--storage", storage,
           "--runs-dir", str(runs_dir), "--n-trials", str(workers * trials), "--workers", str(workers),
           "--pruner", "none", *study_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    error = None if proc.returncode == 0 else error_line(proc.stderr)
    return dict(workers=workers, **study_rate(storage, name, wall_s=wall, error=error))


def study_rate(storage: str, name: str, wall_s: float = math.nan, error: str | None = None) -> dict:
    """The trial rate of a stored study (``storage`` as study/run.py takes it): completed trials over the span from
    the first trial's start to the last one's end, the steady rate (:func:`steady_rate`), mean times, and how many
    trials did not complete. ``wall_s``: the study process's whole time, when known (start-up is what it adds)."""
    import optuna

    from study.storage import open_storage

    try:
        trials_all = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)
    except KeyError:  # the study never started
        trials_all = []
    done = [t for t in trials_all if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"study {name} completed no trial" + (f": {error}" if error else ""))
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    out = dict(trials=len(done), span_s=span, wall_s=wall_s, trials_per_hour=3600 * len(done) / span,
               mean_trial_s=sum(t.duration.total_seconds() for t in done) / len(done),
               **{f"mean_{k}_s": statistics.fmean(t.user_attrs.get(f"{k}_time_s", math.nan) for t in done)
                  for k in ("train", "distil", "eval")})
    out.update(steady_rate(done), failed=len(trials_all) - len(done), error=error)
    return out


def error_line(stderr: str) -> str:
    """The line of a failed study's stderr that says what failed: the last naming an error (Python's warnings from
    its shutdown, such as the resource tracker's, come after it), else the last line."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    named = [ln for ln in lines if "error" in ln.lower() and "warn" not in ln.lower()]
    return (named or lines or ["(no stderr)"])[-1]


def steady_rate(done) -> dict:
    """Trials an hour once every worker has finished its first group: the trials completed more than
    ``GROUP_GAP_S`` after the first completion, over the time from that completion to the last. A worker's
    first group also pays its start-up (bank loading, compiling, cuDNN's autotuning); this rate does not."""
    ends = sorted(t.datetime_complete for t in done)
    later = [e for e in ends if (e - ends[0]).total_seconds() > GROUP_GAP_S]
    span = (ends[-1] - ends[0]).total_seconds()
    if not later or span <= 0:
        return dict(steady_trials=0, steady_span_s=0.0, steady_trials_per_hour=math.nan)
    return dict(steady_trials=len(later), steady_span_s=span, steady_trials_per_hour=3600 * len(later) / span)


GROUP_GAP_S = 5.0  # trials of one group are told within this of each other


def fid_features(args, device, quick: bool, gpu: bool, out: dict, row) -> None:
    """FID feature throughput: the device path against clean-fid's own get_model_features path."""
    extractor = InceptionFeatures(args.inception, device=device)
    n_fid = args.fid_images or (20 if quick else 5000)
    n_clean = args.cleanfid_images or (10 if quick else 1000)
    images = load_images(DataConfig(name="fashion-mnist", n_images=max(n_fid, n_clean), seed=1)).images
    on_dev = images[:n_fid].to(device)
    t_dev = timed(lambda: extractor.features(on_dev, batch_size=500), device, repeat=2)
    t_clean = timed(lambda: cleanfid_features(images[:n_clean], extractor, batch_size=100), device, repeat=1)
    ips_dev, ips_clean = n_fid / t_dev, n_clean / t_clean
    out.update(fid_device_images_per_s=ips_dev, fid_cleanfid_images_per_s=ips_clean)
    row(("FID features, images/s: device path / clean-fid's get_model_features",
         f"{ips_dev:,.0f} / {ips_clean:,.0f} = x{ips_dev / ips_clean:.1f}" + (goal(ips_dev >= 4000) if gpu else "")))


def print_profile(pr: dict, fast: bool) -> None:
    print(f"profile of {pr['iterations']} training iterations (K=4, {'fast' if fast else 'eager'}):"
          f" {pr['kind']} busy {pr['busy_s']:.3f} s of {pr['wall_s']:.3f} s wall = {100 * pr['busy_share']:.0f} %;"
          f" costliest by self {pr['kind']} time:", flush=True)
    for r in pr["top"]:
        print(f"  {100 * r['share']:5.1f} %  {1e3 * r['self_s']:9.2f} ms  {r['calls']:>7} calls  {r['name'][:90]}",
              flush=True)


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as JSON at ``path``, replaced in one step (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads (torch {torch.__version__})"


def goal(ok: bool) -> str:
    return "  [goal met]" if ok else "  [GOAL MISSED]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="default: fmnist-gpu on CUDA, tiny on the CPU")
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="a short smoke run (tiny sizes; the CPU's default preset)")
    p.add_argument("--no-check", action="store_true", help="skip the fast-path correctness checks (gpu_check)")
    p.add_argument("--students", type=int, nargs="*", default=None, metavar="N",
                   help="students per process to time (default 1 2 4 8 16 on CUDA, 1 2 with --quick)")
    p.add_argument("--iterations", type=int, default=None, help="SFD iterations per eager timing (default 20 / 3)")
    p.add_argument("--samples", type=int, default=None, help="images per sampling timing (default 10000 / 40)")
    p.add_argument("--fid-images", type=int, default=None, help="images for the device FID path (default 5000 / 20)")
    p.add_argument("--cleanfid-images", type=int, default=None, help="images for clean-fid's path (default 1000 / 10)")
    p.add_argument("--inception", default=None, help="path to the Inception TorchScript file")
    p.add_argument("--trials-per-hour", type=int, nargs="*", default=None, metavar="N",
                   help="also run short real studies with each of these worker counts (e.g. 1 8) and report trials/hour")
    p.add_argument("--tph-trials", type=int, default=2, metavar="N", help="trials per worker in those studies")
    p.add_argument("--study-args", default="", metavar="ARGS",
                   help="extra study/run.py options for those studies, one string (e.g. '--iterations 200')")
    p.add_argument("--no-fid", action="store_true", help="skip the FID feature timing (needs Fashion-MNIST and Inception)")
    p.add_argument("--campaign-nfe", type=int, nargs="*", default=None, metavar="NFE",
                   help="also time the fast SFD iteration as the campaign trains it (the preset's S, 1 and 3 students) "
                        "at these NFE")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile the SFD training step (K=4, fast path on CUDA) and print its N costliest operators")
    p.add_argument("--out", default=None, help="write the numbers as JSON here too")
    args = p.parse_args(argv)
    try:
        threads = cpu_threads()
    except ValueError as e:
        print(f"bench_core.py: error: {e}", file=sys.stderr)
        return 2
    device = best_device(args.device)
    gpu = device.type == "cuda"
    quick = args.quick or not gpu
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    try:
        get_preset(args.preset or "tiny")
    except ValueError as e:
        print(f"bench_core.py: error: {e}", file=sys.stderr)
        return 2
    teacher, preset = load_bench_teacher(args.preset or ("fmnist-gpu" if gpu else "tiny"), device)
    iters = args.iterations or (3 if args.quick else 20)
    n_sample = args.samples or (40 if args.quick else 10000)
    students = args.students or ([1, 2] if args.quick else [1, 2, 4, 8, 16])
    rows: list[tuple[str, str]] = []
    out: dict = {"machine": machine(device), "preset": preset.name, "teacher": teacher.key}
    clock = {}
    t_section = time.perf_counter()
    out["cpu_threads"] = threads
    print(f"bdense-study core benchmark on {out['machine']}, preset {preset.name} (teacher {teacher.key}), "
          f"{threads} CPU threads", flush=True)

    def row(r: tuple[str, str]) -> None:
        """Every figure is printed as soon as it is measured (a run cut short keeps what it has): the aligned
        table comes again at the end."""
        rows.append(r)
        print(f"{r[0]}  {r[1]}", flush=True)

    def section(name):
        nonlocal t_section
        now = time.perf_counter()
        clock[name] = now - t_section
        t_section = now
        out["section_s"] = clock
        if args.out:  # the JSON too grows section by section (replaced whole: a run killed mid-write leaves the last)
            write_json(Path(args.out), out)

    if gpu and not args.no_check:
        import gpu_check

        checks = gpu_check.run_checks(teacher, preset, steps=20, n_images=1200 if not args.quick else 200)
        out["checks"] = [dict(name=r.name, value=r.value, limit=r.limit, ok=r.ok) for r in checks]
        gpu_check.print_rows(checks, f"fast path vs eager on {out['machine']}, preset {preset.name}")
        section("checks")

    net = teacher.denoiser.net
    for k in (2, 4, 8):
        o = head_overhead(net, k)
        out[f"head_K{k}"] = dict(params_pct=o.params_pct, flops_pct=o.flops_pct, params_base=o.params_base)
        row((f"head overhead K={k}: params / forward FLOPs",
             f"+{o.params_extra:,} ({o.params_pct:.4f}%) / +{o.flops_pct:.4f}%"))

    # --- eager SFD iteration, fresh paths and bank (the existing measures)
    base = replace(preset.config("sfd"), iterations=iters, teacher_substeps=4, fast=False, log_every=None)
    step = {}
    for mode in ("fresh", "bank"):
        bank = build_trajectory_bank(teacher, 4 * base.batch_size, base, seed=0) if mode == "bank" else None
        for k in (1, 4):
            step[(mode, k)] = step_time(teacher, [replace(base, branches=k)], bank)
            out[f"sfd_iter_s_{mode}_K{k}"] = step[(mode, k)]
        row((f"eager SFD iteration, {'teacher paths each iteration' if mode == 'fresh' else 'trajectory bank'} "
             f"(batch {base.batch_size}, S=4): K=1 / K=4",
             f"{1e3 * step[(mode, 1)]:.1f} ms / {1e3 * step[(mode, 4)]:.1f} ms = "
             f"x{step[(mode, 4)] / step[(mode, 1)]:.3f}"))
    section("eager iterations")

    # --- fast SFD iteration against eager, K = 4 against K = 1, N students per process
    fast_iters = 3 if args.quick else 60
    fast_base = replace(base, fast=True, iterations=fast_iters, log_every=1 if args.quick else 20)
    bank = build_trajectory_bank(teacher, 16 * base.batch_size, fast_base, seed=0, k_choices=(1, 4))
    if use_fast(device, True):
        t0 = time.perf_counter()
        fast4 = step_time(teacher, [replace(fast_base, branches=4)], bank)  # compiles on the first trial
        out["compile_train_s"] = time.perf_counter() - t0 - fast_iters * fast4
        print(f"compile time of the first fast training trial (N=1): {out['compile_train_s']:.0f} s", flush=True)
        # K = 4 against K = 1, interleaved over rounds (medians): one window of 60 iterations each moved K = 1 in
        # the S-branch head, the very graph of K = 4, by 3 % against K = 4 on the H100 (session 7)
        step_time(teacher, [replace(fast_base, branches=1)], bank, head=1)  # compiles the 1-branch head
        rounds = {"K4": [], "K1": [], "K1_headS": []}
        for _ in range(1 if args.quick else 5):
            rounds["K4"].append(step_time(teacher, [replace(fast_base, branches=4)], bank))
            rounds["K1"].append(step_time(teacher, [replace(fast_base, branches=1)], bank, head=1))
            rounds["K1_headS"].append(step_time(teacher, [replace(fast_base, branches=1)], bank))
        fast4, fast1, fast1_wide = (statistics.median(v) for v in rounds.values())
        spread = max((max(v) - min(v)) / statistics.median(v) for v in rounds.values())
        out["sfd_iter_s_fast_rounds"] = rounds
        eager4 = step_time(teacher, [replace(base, branches=4)], bank)
        # a full-length bank past NFE 2 outgrows BANK_GPU_BYTES and stays in host memory: its batches are
        # gathered on the host into pinned buffers and copied over every iteration (sfd.PathDraws)
        fast4_host = step_time(teacher, [replace(fast_base, branches=4)], place_bank(bank, torch.device("cpu")))
        out.update(sfd_iter_s_fast_K4=fast4, sfd_iter_s_fast_K1=fast1, sfd_iter_s_fast_K1_headS=fast1_wide,
                   sfd_iter_s_eager_K4=eager4, sfd_iter_s_fast_K4_host_bank=fast4_host)
        row((f"SFD iteration from a bank, K=4, batch {base.batch_size}: eager / fast",
             f"{1e3 * eager4:.1f} ms / {1e3 * fast4:.2f} ms = x{eager4 / fast4:.2f}" + goal(eager4 / fast4 >= 4)))
        row((f"fast SFD iteration, medians of {len(rounds['K4'])} interleaved rounds: K=4 / K=1 (own 1-branch head) / "
             "K=1 in the S=4 head",
             f"{1e3 * fast4:.2f} / {1e3 * fast1:.2f} / {1e3 * fast1_wide:.2f} ms: K4/K1 = "
             f"x{fast4 / fast1:.3f}" + goal(fast4 / fast1 <= 1.02) + f" (rounds within {100 * spread:.1f} %)"))
        row(("fast SFD iteration, K=4: bank on the GPU / in host memory (full length past NFE 2)",
             f"{1e3 * fast4:.2f} ms / {1e3 * fast4_host:.2f} ms = x{fast4_host / fast4:.2f}"))
    else:
        row(("fast SFD iteration", "n/a: the fast path runs on CUDA only (this run: eager)"))
    section("fast iterations")
    if args.profile:
        prof = profile_steps(teacher, replace(fast_base, branches=4), bank, args.profile)
        out["profile"] = prof
        print_profile(prof, use_fast(device, True))
        section("profile")
    if use_fast(device, True):  # PD's update (K = 2: the teacher's two steps, the student's two branches)
        pd = replace(preset.config("pd"), branches=2, iterations=fast_iters, log_every=1 if args.quick else 20)
        data = load_images(preset.data)
        t0 = time.perf_counter()
        pd_fast = pd_step_time(teacher, replace(pd, fast=True), data)  # compiles
        out["compile_pd_s"] = time.perf_counter() - t0 - fast_iters * pd_fast
        pd_fast = pd_step_time(teacher, replace(pd, fast=True), data)
        pd_eager = pd_step_time(teacher, replace(pd, fast=False, log_every=None), data)
        out.update(pd_update_s_fast_K2=pd_fast, pd_update_s_eager_K2=pd_eager)
        row((f"PD update, K=2, batch {pd.batch_size}: eager / fast",
             f"{1e3 * pd_eager:.1f} ms / {1e3 * pd_fast:.2f} ms = x{pd_eager / pd_fast:.2f}"))
        section("PD updates")
    per_n = {}
    for n in students:
        configs = [replace(fast_base, branches=4, seed=i) for i in range(n)]
        step_time(teacher, configs, bank)  # compiles this N (once per process)
        per_n[n] = step_time(teacher, configs, bank)
    out["students_per_process"] = {n: dict(step_s=t, student_iters_per_s=n / t) for n, t in per_n.items()}
    n0 = students[0]
    for n, t in per_n.items():
        row((f"{n:>2} students per process ({'fast' if use_fast(device, True) else 'eager'}, K=4): "
             f"step / students x iterations per s",
             f"{1e3 * t:.2f} ms / {n / t:,.3g} per s = x{(n / t) / (n0 / per_n[n0]):.2f} of N={n0}"))
    section("students per process")
    if args.campaign_nfe:
        # the campaign's own trial shape: the preset's S (24 sub-steps a jump, so a 24-branch head), three seeds'
        # students batched as in a confirmation trial, at each NFE (session 7's NFE-3 trials trained 23.7 ms per
        # student and interval, session 5's NFE-2 ones about 11)
        for nfe in args.campaign_nfe:
            cfg = replace(preset.config("sfd"), nfe=nfe, branches=4, fast=True, iterations=fast_iters,
                          log_every=1 if args.quick else 20)
            nbank = build_trajectory_bank(teacher, 16 * cfg.batch_size, cfg, seed=0, k_choices=(1, 4))
            per_interval = len(cfg.trained_intervals())
            for n in (1, 3):
                configs = [replace(cfg, seed=i) for i in range(n)]
                step_time(teacher, configs, nbank)  # compiles this shape
                t = step_time(teacher, configs, nbank)
                out.setdefault("campaign_iteration_s", {})[f"nfe{nfe}_n{n}"] = t
                out.setdefault("campaign_trained_intervals", {})[f"nfe{nfe}"] = per_interval
                row((f"{'fast' if use_fast(device, True) else 'eager'} SFD iteration as the campaign trains "
                     f"(S={cfg.teacher_substeps}, K=4): NFE {nfe}, {n} "
                     f"student{'s' if n > 1 else ''}", f"{1e3 * t:.2f} ms = {1e3 * t / (n * per_interval):.2f} ms per "
                     f"student and interval"))
                if nfe == args.campaign_nfe[0] and use_fast(device, True):
                    # Inductor leaves this graph NCHW and cuDNN converts around each convolution (the profile):
                    # the same step compiled with the channels-last layout forced (fast.force_layout_opt)
                    os.environ["BDENSE_FORCE_LAYOUT_OPT"] = "1"
                    try:
                        step_time(teacher, configs, nbank)  # compiles the forced-layout engine
                        forced = step_time(teacher, configs, nbank)
                    finally:
                        del os.environ["BDENSE_FORCE_LAYOUT_OPT"]
                    out["campaign_iteration_s"][f"nfe{nfe}_n{n}_forced_layout"] = forced
                    row((f"  the same, NFE {nfe}, {n} student{'s' if n > 1 else ''}: default / forced channels-last "
                         "layout (BDENSE_FORCE_LAYOUT_OPT=1)", f"{1e3 * t:.2f} ms / {1e3 * forced:.2f} ms = "
                         f"x{t / forced:.2f}"))
            del nbank
        section("campaign iterations")

    # --- sampling
    res = {k: distill(teacher, replace(base, branches=k, iterations=1)) for k in (1, 4)}
    for k in (1, 4):
        out[f"sample_s_eager_K{k}"] = timed(lambda: res[k].sample(n_sample, seed=0, fast=False), device, repeat=1)
    row((f"eager student sampling, {n_sample} images at NFE {base.nfe}: K=1 / K=4",
         f"{out['sample_s_eager_K1']:.3f} s / {out['sample_s_eager_K4']:.3f} s = "
         f"x{out['sample_s_eager_K4'] / out['sample_s_eager_K1']:.3f}"))
    if use_fast(device, True):
        fast_s = timed(lambda: res[4].sample(n_sample, seed=0, fast=True), device, repeat=3)
        eager_s = out["sample_s_eager_K4"]
        out["sample_s_fast_K4"] = fast_s
        row((f"student sampling, {n_sample} images at NFE {base.nfe}, K=4: eager / fast",
             f"{eager_s:.3f} s / {fast_s:.3f} s = x{eager_s / fast_s:.2f}" + goal(eager_s / fast_s >= 3)))
        teacher_eager = timed(lambda: teacher.sample(n_sample, seed=0, fast=False), device, repeat=1, warmup=False)
        teacher_fast = timed(lambda: teacher.sample(n_sample, seed=0, fast=True), device, repeat=1)
        out.update(teacher_sample_s_eager=teacher_eager, teacher_sample_s_fast=teacher_fast)
        row((f"teacher sampling, {n_sample} images, {teacher.config.sampler} {teacher.config.sampler_steps} "
             f"steps: eager / fast",
             f"{teacher_eager:.2f} s / {teacher_fast:.2f} s = x{teacher_eager / teacher_fast:.2f}"
             + goal(teacher_eager / teacher_fast >= 3)))
    section("sampling")

    # --- FID features
    if not args.no_fid:
        fid_features(args, device, quick, gpu, out, row)
        section("FID features")

    if args.trials_per_hour:
        if gpu:
            torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory(prefix="bdense-tph-") as tmp:
            tph = [trials_per_hour(n, args.tph_trials, shlex.split(args.study_args), Path(tmp))
                   for n in args.trials_per_hour]
        out["trials_per_hour"] = tph
        first = tph[0]["trials_per_hour"]
        for r in tph:
            row((f"study trials per hour, {r['workers']} worker(s) ({r['trials']} trials, "
                 f"{r['mean_trial_s']:.0f} s each; start-up {r['wall_s'] - r['span_s']:.0f} s apart)",
                 f"{r['trials_per_hour']:,.0f}/h = x{r['trials_per_hour'] / first:.2f}"))
        section("trials per hour")

    out["section_s"] = clock
    width = max(len(r[0]) for r in rows)
    print(f"\nthe table again, aligned ({out['machine']}):")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if "compile_train_s" in out:
        print(f"compile time of the first fast training trial (N=1): {out['compile_train_s']:.0f} s")
    if "profile" in out:
        print_profile(out["profile"], use_fast(device, True))
    print("section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in clock.items()))
    if args.out:
        write_json(Path(args.out), out)
    failed = [c for c in out.get("checks", []) if c["ok"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
