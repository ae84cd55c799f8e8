"""What torch.compile's portable cache saves a fresh machine: the compiled sampler's first call (compiling it and
sampling one batch) in a fresh process whose local compile caches are empty, cold and then with the artifacts the
cold process saved loaded (``BDENSE_COMPILE_CACHE``, :func:`bdense_core.fast.portable_compile_cache`), in one run.

    python benchmarks/bench_compile_cache.py [--preset fmnist-gpu] [--device cuda] [--out FILE.json]
    python benchmarks/bench_compile_cache.py --device cpu --preset cpu --batch 4   # CPU smoke run (no ratio to read)

Each row is one process (its own ``TORCHINDUCTOR_CACHE_DIR``, empty, as on a machine just lent): ``cold`` compiles
everything, ``warm`` first loads what ``cold`` saved as it exited. The second call of each process is the sampler
without compiling, the floor both first calls share. On the CPU the sampler is not compiled (eager path): no ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(preset: str, device: str, batch: int | None) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import torch
    from bench_core import load_bench_teacher, sync

    from bdense_core import fast

    dev = torch.device(device)
    teacher, _ = load_bench_teacher(preset, dev)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        teacher.sample(batch or fast.SAMPLE_BATCH, seed=0, fast=True)
        sync(dev)
        times.append(time.perf_counter() - t)
    print(json.dumps({"loaded": fast.portable_compile_cache(), "first_s": times[0], "second_s": times[1]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fmnist-gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path)
    p.add_argument("--batch", type=int, help="images a call (default: the compiled sampler's batch; small for a CPU smoke run)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.preset, args.device, args.batch)
        return 0
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for name in ("cold", "warm"):
            env = {**os.environ, "BDENSE_COMPILE_CACHE": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / name),
                   "PYTHONPATH": str(ROOT)}
            t = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", "--preset", args.preset, "--device", args.device,
                                  *(["--batch", str(args.batch)] if args.batch else [])],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                print(f"bench_compile_cache.py: the {name} process failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows[name] = {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - t}
            saved = sorted((cache / "new").glob("*.bin"))
            rows[name]["saved_bytes"] = sum(f.stat().st_size for f in saved)
            for f in saved:  # what the next machine would get carried
                f.rename(cache / f.name)
            r = rows[name]
            print(f"{name}: loaded {len(r['loaded'])} file(s); first sampler call {r['first_s']:.1f} s, second "
                  f"{r['second_s']:.2f} s; process {r['process_s']:.1f} s; saved {r['saved_bytes'] / 2**20:.1f} MiB",
                  flush=True)
    cold, warm = rows["cold"]["first_s"], rows["warm"]["first_s"]
    if args.device == "cpu":
        print("CPU: the sampler runs eagerly, nothing is compiled: no ratio to read")
    else:
        print(f"first sampler call (batch of the compiled sampler), cold / with the carried cache: {cold:.1f} s / "
              f"{warm:.1f} s = x{cold / warm:.2f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
