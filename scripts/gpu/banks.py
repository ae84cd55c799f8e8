"""Solve the teacher-path banks a study command will read, before that command runs.

    source scripts/gpu/stage.sh
    python scripts/gpu/banks.py --bank 2:full:1000 --bank 2:full:1002 -- --preset fmnist-gpu --k 2 3 4 6 8 \
        --confirm-top 5 --device cuda:1

A bank needs only the teacher, so on a fresh GPU machine the banks of a campaign's seeds can be solved while
the wheels, the data and the Inception are still being staged. Each ``--bank NFE:LENGTH:SEED`` is one bank,
asked for exactly as a trial of the study command after ``--`` asks for it (``study.workers.Banks``: same key,
same cache), so the study's workers load the file instead of solving it again. A bank that is in the cache is
loaded; one that another process is solving is waited for. Give the study command's own options (``--k``,
``--confirm-top``, ``--paths``, ``--teacher-fp32``...): they decide the bank's key.

``--bank NFE:LENGTH:SEED:I/M`` solves part I of M of that bank (I from 1; about equal runs of paths, e.g. ``:1/2``
on cuda:0 and ``:2/2`` on cuda:1 at the same time); whichever part ends last joins them into the bank file
itself. Start the study only after that: before it, a worker would solve the bank on its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from study.config import UsageError  # noqa: E402


def _bank(text: str) -> tuple[int, str, int, tuple[int, int] | None]:
    parts = text.split(":")
    try:
        nfe, length, seed = int(parts[0]), parts[1], int(parts[2])
        part = None
        if len(parts) == 4:
            i, m = (int(v) for v in parts[3].split("/"))
            if not 1 <= i <= m:
                raise ValueError
            part = (i - 1, m)
        if len(parts) not in (3, 4) or nfe < 1 or seed < 0:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"a bank is NFE:LENGTH:SEED or NFE:LENGTH:SEED:I/M (part I of M), e.g. "
                                         f"2:full:1000 or 3:full:1002:1/2; got {text!r}") from None
    return nfe, length, seed, part


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", type=_bank, action="append", required=True, metavar="NFE:LENGTH:SEED")
    p.add_argument("study_args", nargs=argparse.REMAINDER, help="-- then the study/run.py options of the study")
    args = p.parse_args(argv)
    study_args = [a for a in args.study_args if a != "--"]

    from bdense_core.runtime import best_device
    from study.cli import parse_config
    from study.run import prepare_teacher
    from study.workers import Banks

    try:
        config = parse_config(study_args)
        for nfe, length, seed, _ in args.bank:
            if length not in config.shared:
                raise UsageError(f"--bank {nfe}:{length}:{seed}: this study command trains nothing at length "
                                 f"{length!r} (it has {', '.join(config.shared)}); give its own options after --")
        banks = Banks(config, prepare_teacher(config, best_device(config.device), announce=False), keep=1)
        if banks.key(*args.bank[0][:3]) is None:
            raise UsageError("this study command's trials read no bank (--paths fresh, or a framework without one)")
        from bdense_core.distill.sfd import part_rows

        for nfe, length, seed, part in args.bank:
            if part is not None:
                try:
                    part_rows(banks.spec(banks.key(nfe, length, seed))["size"], *part)
                except ValueError as e:
                    raise UsageError(f"--bank {nfe}:{length}:{seed}:{part[0] + 1}/{part[1]}: {e}") from None
    except UsageError as e:
        print(f"banks.py: error: {e}", file=sys.stderr)
        return 2
    from bdense_core.distill.sfd import cached_bank_part

    for nfe, length, seed, part in args.bank:
        t0 = time.perf_counter()
        if part is None:
            bank = banks(nfe, length, seed)
            print(f"bank NFE {nfe}, {length} length, seed {seed}: {len(bank):,} paths ready in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            continue
        spec = banks.spec(banks.key(nfe, length, seed))
        did = cached_bank_part(banks.teacher, spec["size"], spec["config"], spec["seed"], spec["root"], *part,
                               k_choices=spec["k_choices"])
        print(f"bank NFE {nfe}, {length} length, seed {seed}: {did} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
